"""Self-generated trajectories: the student's own episodes, kept by the verifier and/or judge.

Rejection sampling in the style of expert iteration: the student plays k episodes per task
(sampling, so they differ), and only the ones the environment verified (and/or the judge
passed) are kept, relabelled with provenance ``self``. Training on them sharpens what the
student can already sometimes do, with no teacher in the loop.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trajgym.config import save_config
from trajgym.judges.calibration import (
    DROP_REASONS,
    JudgeConfig,
    drop_reason,
    grade_all,
    make_judge,
)
from trajgym.judges.judge import Judge
from trajgym.records.schema import Trajectory
from trajgym.records.store import TrajectoryStore, read_trajectories
from trajgym.rollouts.config import AgentSpec, GenerateConfig
from trajgym.rollouts.generate import generate

Keep = Literal["verified", "judge", "both"]


class SelfGenConfig(BaseModel):
    """A self-generation run: rollouts by the student, then rejection sampling."""

    model_config = ConfigDict(extra="forbid")

    env: str = Field("trajgym/RetailLite-v0", description="Environment id.")
    agent: AgentSpec = Field(
        default_factory=lambda: AgentSpec(kind="student", temperature=1.0, max_new_tokens=96),
        description="Who plays: the student (sample with temperature > 0), or any agent.",
    )
    samples_per_task: int = Field(4, ge=1, description="Episodes per task (k).")
    first_task: int = Field(0, ge=0, description="Skip this many train tasks first.")
    max_tasks: int = Field(200, ge=1, description="Most train tasks to try.")
    tasks_per_round: int = Field(20, ge=1, description="Tasks added per round until `target`.")
    target: int | None = Field(
        None, ge=1, description="Stop once this many trajectories are kept (None: all tasks)."
    )
    keep: Keep = Field("both", description="Keep by verified reward, judge verdict, or both.")
    provenance: Literal["self"] | None = Field(
        "self", description="Provenance kind of the kept trajectories (None: as played)."
    )
    judge: JudgeConfig = Field(default_factory=lambda: JudgeConfig(), description="The judge.")
    seed: int = Field(0, description="Base seed of the episodes.")
    output: Path = Field(Path("runs/selfgen/self.jsonl"), description="Kept trajectories.")
    concurrency: int = Field(8, ge=1, description="Episodes in flight (= the student's batch).")
    max_turns: int | None = Field(12, ge=1, description="Agent steps before an episode is cut.")

    @property
    def rollouts_path(self) -> Path:
        """Every episode the student played, kept or not."""
        return self.output.with_name(self.output.stem + ".rollouts.jsonl")


def self_generate(config: SelfGenConfig, show_progress: bool = True) -> dict[str, int]:
    """Play rounds of tasks until ``target`` are kept (or tasks run out); resumable."""
    save_config(config, config.output.with_suffix(".config.yaml"))
    judge = make_judge(config.judge) if config.keep != "verified" else None
    tasks, counts = 0, {}
    while tasks < config.max_tasks:
        tasks = min(config.max_tasks, tasks + config.tasks_per_round)
        generate(
            GenerateConfig(
                envs=[config.env],
                split="train",
                first_task=config.first_task,
                num_tasks=tasks,
                samples_per_task=config.samples_per_task,
                agent=config.agent,
                seed=config.seed,
                output=config.rollouts_path,
                concurrency=config.concurrency,
                max_turns=config.max_turns,
            ),
            show_progress,
        )
        counts = _keep(config, judge)
        if config.target is not None and counts["kept"] >= config.target:
            break
    counts["tasks"] = tasks
    summary = {"keep": config.keep, "judge": judge.name if judge else None, **counts}
    config.output.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1))
    return counts


def _keep(config: SelfGenConfig, judge: Judge | None) -> dict[str, int]:
    """Write the first ``target`` kept rollouts (provenance ``self``); count the rest.

    Judge verdicts are stored with their rollouts (``.judged.jsonl``), so a later round or a
    resumed run never pays for grading the same episode twice.
    """
    judged_path = config.output.with_name(config.output.stem + ".judged.jsonl")
    verdicts = {t.key: t.judge for t in read_trajectories(judged_path)}
    played = [
        t.model_copy(update={"judge": verdicts[t.key]}) if t.key in verdicts else t
        for t in read_trajectories(config.rollouts_path)
    ]
    if judge is not None:
        needed = [  # graded only where the verdict can change the decision
            t
            for t in played
            if t.key not in verdicts and t.status == "ok" and (config.keep == "judge" or t.success)
        ]
        with TrajectoryStore(judged_path) as judged:
            graded = {
                t.key: t for t in grade_all(judge, needed, config.judge.concurrency, judged.append)
            }
        played = [graded.get(t.key, t) for t in played]
    reasons = Counter(drop_reason(t, config.keep) or "kept" for t in played)
    kept = [t for t in played if drop_reason(t, config.keep) is None][: config.target]
    with TrajectoryStore(config.output) as store:
        for t in kept:
            store.append(_as_self(t) if config.provenance else t)
    return {"rollouts": len(played), "kept": len(kept)} | {r: reasons[r] for r in DROP_REASONS}


def _as_self(t: Trajectory) -> Trajectory:
    provenance = t.provenance.model_copy(update={"kind": "self"})
    return t.model_copy(update={"provenance": provenance})
