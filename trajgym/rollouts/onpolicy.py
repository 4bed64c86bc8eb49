"""On-policy distillation with a black-box teacher (DAgger-style).

The student acts in the environment; at every state it reached (each of its turns), the
teacher is shown the conversation up to there and says what it would do. The student's
trajectory is stored with those labels (provenance ``on_policy_teacher``), and training uses
the teacher's actions in the student's own states: :func:`training_conversations` turns one
labelled trajectory into the fewest sequences that carry every label, so the student learns
to recover from the places its own mistakes lead to, which copying a teacher's clean
trajectories never shows it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import JsonValue
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from trajgym.agents.base import Agent, EpisodeContext
from trajgym.envs import make
from trajgym.envs.base import ToolEnv
from trajgym.errors import ConfigError, ProviderError
from trajgym.llm.client import LLMClient
from trajgym.records.schema import Message, Provenance, TeacherLabel, Trajectory, Usage
from trajgym.records.store import TrajectoryStore, read_trajectories
from trajgym.rollouts.config import AgentSpec


def teacher_agent(spec: AgentSpec, client: LLMClient | None = None) -> Agent:
    """The labelling teacher: the scripted expert from any state, or any litellm model."""
    if spec.kind == "expert":
        from trajgym.agents.expert_labeler import ExpertLabeler

        return ExpertLabeler()
    if spec.kind == "litellm":
        from trajgym.agents.teacher import LLMAgent

        assert spec.llm is not None  # AgentSpec validates this
        return LLMAgent(spec.llm, tool_mode=spec.tool_mode, client=client, kind="on_policy_teacher")
    raise ConfigError(
        f"An on-policy teacher must be 'expert' or 'litellm', not '{spec.kind}': a teacher has "
        "to say what it would do at a state someone else reached."
    )


def label(trajectory: Trajectory, teacher: Agent, context: EpisodeContext) -> Trajectory:
    """The student's trajectory with the teacher's action at each of the student's turns.

    A teacher call that fails after its retries (a ProviderError) marks the labelled record
    ``status="error"`` with the reason: counted, never trained on, never a wrong label.
    """
    teacher.reset(context)
    labels = []
    try:
        for i, m in enumerate(trajectory.messages):
            if m.role == "assistant":
                labels.append(TeacherLabel(index=i, message=teacher.act(trajectory.messages[:i])))
        error = None
    except ProviderError as e:
        error = f"teacher: {e}"
    student = trajectory.provenance
    decoding: dict[str, JsonValue] = {"student": student.model or student.agent}
    decoding |= {f"student_{k}": v for k, v in student.decoding.items()}
    teacher_prov = teacher.provenance
    provenance = Provenance(
        kind="on_policy_teacher",
        agent=teacher_prov.agent,
        model=teacher_prov.model,
        decoding=decoding,
    )
    update: dict[str, Any] = {
        "labels": tuple(labels),
        "provenance": provenance,
        "usage": trajectory.usage + getattr(teacher, "usage", Usage()),
    }
    if error:
        update |= {"status": "error", "error": error, "labels": ()}
    return trajectory.model_copy(update=update)


def label_file(
    rollouts: Path,
    output: Path,
    teacher: AgentSpec,
    limit: int | None = None,
    concurrency: int = 16,
    show_progress: bool = True,
) -> dict[str, int]:
    """Label the first ``limit`` usable student trajectories of ``rollouts`` into ``output``.

    Resumable: trajectories whose key is already in ``output`` are skipped. Student episodes
    that failed on infrastructure (status error) have no states worth labelling and are
    skipped too.
    """
    client = LLMClient(teacher.llm) if teacher.kind == "litellm" and teacher.llm else None
    usable = [t for t in read_trajectories(rollouts) if t.status == "ok"][:limit]
    contexts = _Contexts()
    counts = {"rollouts": len(usable), "labelled": 0, "errors": 0, "skipped": 0}
    lock = threading.Lock()
    with TrajectoryStore(output) as store:
        todo = [t for t in usable if t.key not in store]
        counts["skipped"] = len(usable) - len(todo)

        def run(t: Trajectory) -> None:
            labelled = label(t, teacher_agent(teacher, client), contexts.get(t))
            store.append(labelled)
            with lock:
                counts["labelled" if labelled.status == "ok" else "errors"] += 1

        progress = Progress(
            TextColumn("[bold]label"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            disable=not show_progress,
        )
        with progress, ThreadPoolExecutor(concurrency) as pool:
            bar = progress.add_task("trajectories", total=len(todo))
            for _ in pool.map(run, todo):
                progress.advance(bar)
    return counts


class _Contexts:
    """What the teacher is told at an episode's start, rebuilt from the env (thread-safe)."""

    def __init__(self) -> None:
        self._envs: dict[tuple[str, str], ToolEnv[Any]] = {}
        self._lock = threading.Lock()

    def get(self, t: Trajectory) -> EpisodeContext:
        with self._lock:
            env = self._envs.get((t.env_id, t.split))
            if env is None:
                made = make(t.env_id, split=t.split).unwrapped
                assert isinstance(made, ToolEnv)
                env = self._envs[(t.env_id, t.split)] = made
        system = next((m.text for m in t.messages if m.role == "system"), "")
        return EpisodeContext(
            task=env.task_by_id(t.task_id),
            system_prompt=system,
            tools=t.tools,
            confirm_tools=tuple(n for n, tool in env.toolkit.tools.items() if tool.writes),
            seed=t.seed,
        )


def training_conversations(t: Trajectory) -> Iterator[tuple[list[Message], set[int]]]:
    """The sequences that carry a labelled trajectory's labels: (messages, trained indices).

    Where the student already did what the teacher would, its own turn is the label and
    stays in place; at each disagreement a sequence ends with the teacher's action instead,
    and the next one continues from the student's real history. So a trajectory costs one
    sequence per disagreement (plus one for agreeing turns after the last), not one per turn.
    """
    agreed: set[int] = set()
    for item in sorted(t.labels, key=lambda x: x.index):
        if same_action(t.messages[item.index], item.message):
            agreed.add(item.index)
            continue
        yield [*t.messages[: item.index], item.message], agreed | {item.index}
        agreed = set()
    if agreed:
        yield list(t.messages[: max(agreed) + 1]), agreed


def same_action(a: Message, b: Message) -> bool:
    """Whether two assistant messages do the same: the same calls, or the same words."""
    if a.tool_calls or b.tool_calls:
        return _calls(a) == _calls(b)
    return a.text.strip() == b.text.strip()


def _calls(m: Message) -> list[tuple[str, Any]]:
    calls = []
    for c in m.tool_calls or ():
        try:
            arguments = json.loads(c.function.arguments or "{}")
        except json.JSONDecodeError:
            arguments = c.function.arguments
        calls.append((c.function.name, arguments))
    return calls
