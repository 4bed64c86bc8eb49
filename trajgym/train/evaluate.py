"""Evaluation metrics over trajectories: success with bootstrap CIs, pass@k, pass^k, breakdowns.

An evaluation is a generation run (the agent under test, k samples per task, in any split)
followed by :func:`summarize` over the stored trajectories, which are kept for inspection.
Infrastructure errors are counted apart and never scored as failures.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trajgym.records.schema import Trajectory


class GroupRate(BaseModel):
    """Success within one family or persona."""

    model_config = ConfigDict(frozen=True)

    episodes: int
    success_rate: float

    def __getitem__(self, key: str) -> Any:
        """Fields by name, as in the JSON file."""
        return getattr(self, key)


class EvalMetrics(BaseModel):
    """An agent's evaluation: success with its 95% CI, pass@k, pass^k, breakdowns.

    Written to ``<trajectories>.eval.json`` with the keys ``pass@k`` and ``pass^k`` spelled
    out (:meth:`as_json`); read back with :meth:`from_json`.
    """

    model_config = ConfigDict(frozen=True)

    k: int = Field(description="Samples per task behind pass@k and pass^k.")
    episodes: int = Field(description="Episodes scored (status ok).")
    errors: int = Field(description="Infrastructure errors, never scored.")
    tasks: int
    success_rate: float
    success_ci95: tuple[float, float]
    pass_at_k: float
    pass_hat_k: float
    by_family: dict[str, GroupRate]
    by_persona: dict[str, GroupRate]
    avg_turns: float
    avg_tool_calls: float
    avg_invalid_tool_calls: float
    avg_tool_errors: float

    def __getitem__(self, key: str) -> Any:
        """Fields by their JSON names (``m["pass@3"]``, ``m["success_rate"]``)."""
        return self.as_json()[key] if "@" in key or "^" in key else getattr(self, key)

    def as_json(self) -> dict[str, Any]:
        """The JSON form, with ``pass@k`` / ``pass^k`` keys."""
        data = self.model_dump(mode="json")
        data[f"pass@{self.k}"] = data.pop("pass_at_k")
        data[f"pass^{self.k}"] = data.pop("pass_hat_k")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalMetrics:
        """Read back what :meth:`as_json` wrote."""
        data = dict(data)
        k = data["k"]
        data["pass_at_k"], data["pass_hat_k"] = data.pop(f"pass@{k}"), data.pop(f"pass^{k}")
        return cls.model_validate(data)


def summarize(trajectories: Iterable[Trajectory], k: int, seed: int = 0) -> EvalMetrics:
    """Success rate (95% bootstrap CI over tasks), pass@k, pass^k, per family and persona."""
    every = list(trajectories)
    errors = [t for t in every if t.status == "error"]
    scored = [t for t in every if t.status == "ok"]
    by_task: dict[tuple[str, str], list[bool]] = defaultdict(list)
    for t in scored:
        by_task[(t.env_id, t.task_id)].append(t.success)
    outcomes = list(by_task.values())
    return EvalMetrics(
        k=k,
        episodes=len(scored),
        errors=len(errors),
        tasks=len(outcomes),
        success_rate=_rate(outcomes),
        success_ci95=bootstrap_ci(outcomes, seed=seed),
        pass_at_k=_mean(pass_at_k(len(o), sum(o), k) for o in outcomes if len(o) >= k),
        pass_hat_k=_mean(pass_hat_k(len(o), sum(o), k) for o in outcomes if len(o) >= k),
        by_family=_breakdown(scored, "family"),
        by_persona=_breakdown(scored, "persona"),
        avg_turns=_mean(sum(m.role == "assistant" for m in t.messages) for t in scored),
        avg_tool_calls=_mean(tool_calls(t) for t in scored),
        avg_invalid_tool_calls=_mean(invalid_tool_calls(t) for t in scored),
        avg_tool_errors=_mean(_errors(t, ("Error:",)) for t in scored),
    )


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k samples (from n with c successes) succeeds (unbiased)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_hat_k(n: int, c: int, k: int) -> float:
    """Chance that all k samples succeed (tau-bench's pass^k), estimated from n samples."""
    return math.comb(c, k) / math.comb(n, k)


def bootstrap_ci(
    outcomes: list[list[bool]], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile interval of the success rate, resampling whole tasks.

    Episodes of one task are not independent, so tasks, not episodes, are resampled.
    """
    if not outcomes:
        return (0.0, 0.0)
    rng = random.Random(seed)
    rates = sorted(
        _rate([outcomes[rng.randrange(len(outcomes))] for _ in outcomes]) for _ in range(resamples)
    )
    return (rates[int(0.025 * resamples)], rates[int(0.975 * resamples) - 1])


def _rate(outcomes: list[list[bool]]) -> float:
    total = sum(len(o) for o in outcomes)
    return sum(sum(o) for o in outcomes) / total if total else 0.0


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else 0.0


def _breakdown(trajectories: list[Trajectory], field: str) -> dict[str, GroupRate]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for t in trajectories:
        groups[str(getattr(t, field))].append(t.success)
    return {
        g: GroupRate(episodes=len(v), success_rate=sum(v) / len(v))
        for g, v in sorted(groups.items())
    }


def tool_calls(t: Trajectory) -> int:
    """How many tool calls the agent made."""
    return sum(len(m.tool_calls or ()) for m in t.messages)


def invalid_tool_calls(t: Trajectory) -> int:
    """Calls the toolkit could not run: unknown tool, unreadable or wrong arguments."""
    return _errors(t, _INVALID)


# Calls the toolkit could not even run (as opposed to a tool refusing a valid request).
_INVALID = ("Error: unknown tool", "Error: arguments for", "Error: invalid arguments for")


def _errors(t: Trajectory, prefixes: tuple[str, ...]) -> int:
    return sum(1 for m in t.messages if m.role == "tool" and m.text.startswith(prefixes))
