"""What a generation run did, counted live, and the progress bar both backends show."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from trajgym.envs.users.llm import SimulatorStats
from trajgym.records.schema import Trajectory, Usage


@dataclass
class GenerateReport:
    """What a generation run did; counters are updated live by the workers."""

    planned: int = 0
    skipped: int = 0
    written: int = 0
    ok: int = 0
    errors: int = 0
    successes: int = 0
    usage: Usage = field(default_factory=Usage)
    simulator: SimulatorStats = field(default_factory=SimulatorStats)
    wall_s: float = 0.0
    episodes_wall_s: float = 0.0
    drain_s: float = 0.0  # from the last episode's start to the end: slots emptying out
    playing_since: float = 0.0  # perf_counter() when the first episode started
    all_started: float = 0.0  # perf_counter() when the last episode started
    # What the store holds of the planned keys at the end, this run's and earlier runs'
    # (a resumed run writes only what was missing): see generate.stored_counts.
    stored: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, t: Trajectory) -> None:
        """Count one finished episode."""
        with self._lock:
            self.written += 1
            self.ok += t.status == "ok"
            self.errors += t.status == "error"
            self.successes += t.success
            self.usage = self.usage + t.usage + t.user_usage

    def line(self) -> str:
        """The progress bar's live counters."""
        u = self.usage
        tokens = u.prompt_tokens + u.completion_tokens
        return f"ok {self.ok}  error {self.errors}  tokens {tokens:,}  cost ${u.cost_usd:.4f}"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "planned": self.planned,
            "skipped_already_stored": self.skipped,
            "written": self.written,
            "ok": self.ok,
            "errors": self.errors,
            "successes": self.successes,
            "success_rate_of_ok": self.successes / max(1, self.ok),
            "usage": self.usage.model_dump(),
            "simulator_turns": self.simulator.turns,
            "simulator_faults": dict(self.simulator.faults),
            "simulator_fault_rate": self.simulator.fault_rate,
            "wall_s": round(self.wall_s, 3),
            "episodes_wall_s": round(self.episodes_wall_s, 3),
            "drain_s": round(self.drain_s, 3),
            "episodes_per_s": (
                round(self.written / self.episodes_wall_s, 3) if self.episodes_wall_s else None
            ),
        }


def generation_progress(label: str, show: bool) -> Progress:
    """The progress bar both backends show: episodes done, live counters, time."""
    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        disable=not show,
    )
