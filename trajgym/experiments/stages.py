"""What the main job and comparisons share: evaluation, the resume rule, stage checks.

``trajgym run`` and ``trajgym compare`` evaluate their agents with :func:`evaluate` (one
generation run per agent and place, then :func:`~trajgym.train.evaluate.summarize`), skip a
training stage whose ``summary.json`` exists (:func:`train_once`), and load a trained student
from where its training run put it (:func:`student`).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trajgym.agents.models import resolve_dtype
from trajgym.records.schema import Split
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec, GenerateConfig, StudentDtype
from trajgym.rollouts.generate import generate
from trajgym.rollouts.runner import forget_loaded_students
from trajgym.train.common import TrainedModel, release_freed_memory
from trajgym.train.evaluate import EvalMetrics, summarize
from trajgym.train.identity import agent_identity, code_identity, identity_digest

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
    concurrency: int = Field(
        32,
        ge=1,
        description="Episodes in flight (= the student's batch): the engine decodes them "
        "together, so more in flight is faster (bench/generate.py: 32 gave 2x the episodes/s "
        "of 8 on 2 CPU cores).",
    )
    dtype: StudentDtype = Field(
        "auto",
        description="Students' weights and KV caches while evaluated (auto: bfloat16 where "
        "native, else float32; recorded resolved, so a result names what computed it).",
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
            dtype = resolve_dtype(stage.dtype)
            playing = agent.model_copy(update={"dtype": dtype}) if is_student else agent
            identity = {
                "agent": agent_identity(playing),
                "place": place.model_dump(mode="json"),
                "settings": {"k": stage.k, "seed": seed, "max_turns": stage.max_turns},
                "concurrency": stage.concurrency,  # the batches a student's replies shared
                "code": code_identity(),
            }
            cache = reuse_evaluation(output, identity)
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
            played = list(read_trajectories(output))
            if cache is not None and all(t.status == "ok" for t in played):
                _copy_atomically(output, cache)
            metrics = summarize(played, stage.k)
            output.with_suffix(".eval.json").write_text(json.dumps(metrics.as_json(), indent=1))
            results.setdefault(name, {})[place.label] = metrics
            if timings is not None:
                timings[f"eval_{name}_{place.label}_s"] = round(time.perf_counter() - started, 1)
        forget_loaded_students()  # loaded once for all its places; the next agent's turn
        release_freed_memory()
    return results


def reuse_evaluation(output: Path, identity: dict[str, Any]) -> Path | None:
    """Prepare ``output`` for an evaluation with this identity; the cache entry, if cacheable.

    A store made by another model, agent, setting or code is moved aside (a retrained student
    never inherits its predecessor's episodes). A deterministic evaluation (greedy student,
    scripted expert or baseline) is cached by its identity across runs: an unchanged model
    (the base student) is played once, not in every run.
    """
    digest = identity_digest(identity)
    recorded = output.with_suffix(".identity.json")
    if output.exists():
        previous = json.loads(recorded.read_text()).get("digest") if recorded.exists() else None
        if previous != digest:
            output.rename(output.with_suffix(f".stale-{previous or 'unknown'}.jsonl"))
    output.parent.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps({"digest": digest, **identity}, indent=1))
    agent = identity["agent"]["spec"]
    if agent["kind"] == "litellm" or agent["temperature"] > 0:
        return None  # sampled or a provider's: not reproducible, so never reused across runs
    from trajgym.agents.models import cache_dir

    cache = cache_dir() / "evaluations" / f"{digest}.jsonl"
    if cache.exists() and not output.exists():
        _copy_atomically(cache, output)
    return cache


def _copy_atomically(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_suffix(".partial")
    shutil.copyfile(source, staging)
    staging.rename(target)


def results_json(results: Results) -> dict[str, dict[str, dict[str, Any]]]:
    """The results as they are written to ``report.json``."""
    return {name: {p: m.as_json() for p, m in by.items()} for name, by in results.items()}
