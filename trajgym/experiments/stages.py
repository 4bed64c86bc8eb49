"""What the main job and comparisons share: evaluation, the resume rule, stage checks.

``trajgym run`` and ``trajgym compare`` evaluate their agents with :func:`evaluate` (one
generation run per agent and place, then :func:`~trajgym.train.evaluate.summarize`), skip a
training stage whose ``summary.json`` exists (:func:`train_once`), and load a trained student
from where its training run put it (:func:`student`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trajgym.records.schema import Split
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec, GenerateConfig, StudentDtype
from trajgym.rollouts.generate import generate
from trajgym.train.common import TrainedModel, release_freed_memory
from trajgym.train.evaluate import EvalMetrics, summarize

Results = dict[str, dict[str, EvalMetrics]]
"""Metrics by agent name, then by place (a split, or a held-out domain)."""

S = TypeVar("S")


class EvalStage(BaseModel):
    """Where and how the agents are compared."""

    model_config = ConfigDict(extra="forbid")

    splits: list[Split] = Field(["test", "ood"], description="Held-out splits.")
    num_tasks: int = Field(40, ge=1, description="Tasks per split.")
    k: int = Field(1, ge=1, description="Samples per task (pass@k, pass^k).")
    max_new_tokens: int = Field(96, ge=1, description="Student reply length limit.")
    max_turns: int = Field(12, ge=1, description="Agent steps before an episode is cut.")
    concurrency: int = Field(8, ge=1, description="Episodes in flight (= the student's batch).")
    dtype: StudentDtype = Field(
        "float32", description="Students' weights and KV caches while evaluated."
    )
    teacher: bool = Field(True, description="Also evaluate the teacher, for reference.")


class Place(BaseModel):
    """Tasks an agent is evaluated on, under a label for the report."""

    model_config = ConfigDict(frozen=True)

    env: str
    split: Split
    label: str
    num_tasks: int
    families: list[str] | None = None


def check_stage(stage: str, build: Callable[[], object]) -> None:
    """Build a stage's config now; its problems become ``<stage>.<field>: <message>``."""
    try:
        build()
    except ValidationError as e:
        problems = "; ".join(
            f"{stage}.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
        )
        raise ValueError(problems) from None


def train_once(output_dir: Path, train: Callable[[], S]) -> S | dict[str, Any]:
    """Run a training stage, unless an earlier run finished it (its ``summary.json``)."""
    summary = output_dir / "summary.json"
    if summary.exists():
        loaded: dict[str, Any] = json.loads(summary.read_text())
        return loaded
    return train()


def student(model: TrainedModel, max_new_tokens: int, temperature: float = 0.0) -> AgentSpec:
    """The agent that plays with a (trained or base) student."""
    return AgentSpec(
        kind="student",
        student=model.student,
        adapter=model.adapter,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
    )


def eval_store(out: Path, agent: str, place: str) -> Path:
    """The store of one agent's evaluation on one place."""
    slug = f"{agent}-{place}".replace(" ", "-").replace("(", "").replace(")", "")
    return out / f"{slug}.jsonl"


def evaluate(
    agents: dict[str, AgentSpec],
    places: list[Place],
    stage: EvalStage,
    out: Path,
    seed: int,
    show_progress: bool = True,
    timings: dict[str, float] | None = None,
) -> Results:
    """Every agent on every place, each a resumable store under ``out``, with its metrics."""
    results: Results = {}
    for name, agent in agents.items():
        for place in places:
            started = time.perf_counter()
            output = eval_store(out, name, place.label)
            is_student = agent.kind == "student"
            playing = agent.model_copy(update={"dtype": stage.dtype}) if is_student else agent
            config = GenerateConfig(
                envs=[place.env],
                split=place.split,
                families=place.families,
                num_tasks=place.num_tasks,
                samples_per_task=stage.k,
                agent=playing,
                seed=seed,
                output=output,
                concurrency=stage.concurrency,
                max_turns=stage.max_turns,
            )
            generate(config, show_progress)
            release_freed_memory()  # the student's caches, before the next agent loads
            metrics = summarize(read_trajectories(output), stage.k)
            output.with_suffix(".eval.json").write_text(json.dumps(metrics.as_json(), indent=1))
            results.setdefault(name, {})[place.label] = metrics
            if timings is not None:
                timings[f"eval_{name}_{place.label}_s"] = round(time.perf_counter() - started, 1)
    return results


def results_json(results: Results) -> dict[str, dict[str, dict[str, Any]]]:
    """The results as they are written to ``report.json``."""
    return {name: {p: m.as_json() for p, m in by.items()} for name, by in results.items()}
