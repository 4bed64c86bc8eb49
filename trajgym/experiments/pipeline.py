"""The main job in one command: harvest with the teacher, train the student, compare them.

``trajgym run configs/quickstart.yaml`` runs its stages into one folder: harvest teacher
trajectories on the train split, SFT the student on the verified ones, optionally improve it
with GRPO in the environment (RL), evaluate the teacher, the base student, the SFT student
(and the SFT+RL student) on the held-out splits, and write a report (Markdown tables, JSON,
plot). Every stage resumes: re-running the command after a crash skips finished work (the
stores are keyed, SFT and RL restart from their checkpoints).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trajgym.experiments.report import plot_results, render_run_report
from trajgym.experiments.stages import (
    EvalStage,
    Place,
    check_stage,
    eval_store,
    evaluate,
    results_json,
    student,
    train_once,
)
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec, GenerateConfig
from trajgym.rollouts.generate import generate
from trajgym.train.common import TrainedModel, release_freed_memory
from trajgym.train.failures import failure_rows
from trajgym.train.rl import RLConfig, RLSettings
from trajgym.train.sft import SFTConfig, SFTSettings


class HarvestStage(BaseModel):
    """Who produces the training data, and how much."""

    model_config = ConfigDict(extra="forbid")

    teacher: AgentSpec = Field(default_factory=lambda: AgentSpec(), description="The teacher.")
    num_tasks: int = Field(240, ge=1, description="Train tasks to harvest.")
    samples_per_task: int = Field(1, ge=1, description="Episodes per task.")
    balance_families: bool = Field(
        True, description="Harvest the families equally (not the first N tasks of the list)."
    )
    concurrency: int = Field(64, ge=1, description="Episodes in flight.")


class PipelineConfig(BaseModel):
    """A whole run: one environment, one teacher, one student."""

    model_config = ConfigDict(extra="forbid")

    env: str = Field("trajgym/RetailLite-v0", description="Environment id.")
    output_dir: Path = Field(Path("runs/quickstart"), description="Everything the run writes.")
    seed: int = Field(0, description="Seed for generation and training (unless a stage sets one).")
    harvest: HarvestStage = Field(default_factory=lambda: HarvestStage(), description="Stage 1.")
    sft: SFTSettings = Field(
        default_factory=lambda: SFTSettings(),
        description="How the student is fine-tuned on the harvest (its data and folder are set "
        "here).",
    )
    rl: RLSettings | None = Field(
        None, description="GRPO after SFT, starting from the SFT student (None: no RL stage)."
    )
    eval: EvalStage = Field(default_factory=lambda: EvalStage(), description="Last stage.")
    smoke: list[str] = Field(
        default_factory=list, description="Overrides (key=value) applied by --smoke."
    )

    @model_validator(mode="after")
    def _stages_are_valid(self) -> PipelineConfig:
        if self.rl is not None and {"model", "adapter"} & self.rl.model_fields_set:
            raise ValueError("rl.model / rl.adapter: RL starts from the SFT student; set sft.model")
        check_stage("rl", self.rl_config)  # fail at load time, not after the harvest
        return self

    def sft_config(self) -> SFTConfig:
        """The SFT stage's full config."""
        seed = {} if "seed" in self.sft.model_fields_set else {"seed": self.seed}
        fields = self.sft.model_dump(exclude_unset=True) | seed
        fields |= {"data": [self.harvest_path], "output_dir": self.output_dir / "sft"}
        return SFTConfig.model_validate(fields)

    def rl_config(self) -> RLConfig | None:
        """The RL stage's full config: it starts from the SFT student."""
        if self.rl is None:
            return None
        sft = self.sft_config().trained()
        start: dict[str, Any] = {"model": sft.student, "adapter": sft.adapter}
        seed = {} if "seed" in self.rl.model_fields_set else {"seed": self.seed}
        fields = self.rl.model_dump(exclude_unset=True) | seed | start
        fields |= {"envs": [self.env], "output_dir": self.output_dir / "rl"}
        return RLConfig.model_validate(fields)

    @property
    def harvest_path(self) -> Path:
        """Where the harvested trajectories go."""
        return self.output_dir / "harvest" / "trajectories.jsonl"


def run(config: PipelineConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every stage; returns the report, also written to the output folder."""
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    generate(_harvest_config(config), show_progress)
    timings["harvest_s"] = time.perf_counter() - started

    started = time.perf_counter()
    sft = config.sft_config()
    sft_summary = train_once(sft.output_dir, lambda: _train_sft(sft))
    release_freed_memory()  # the trainer's optimizer state and activations
    timings["sft_s"] = time.perf_counter() - started

    rl, rl_summary = config.rl_config(), None
    if rl is not None:
        started = time.perf_counter()
        rl_summary = train_once(rl.output_dir, lambda: _train_rl(rl))
        release_freed_memory()
        timings["rl_s"] = time.perf_counter() - started

    places = [
        Place(env=config.env, split=s, label=s, num_tasks=config.eval.num_tasks)
        for s in config.eval.splits
    ]
    agents = _agents(config, sft.model, sft.trained(), rl.trained() if rl else None)
    results = evaluate(
        agents, places, config.eval, out / "eval", config.seed, show_progress, timings
    )
    report = {
        "env": config.env,
        "k": config.eval.k,
        "harvest": _harvest_report(config.harvest_path),
        "sft": {k: sft_summary.get(k) for k in ("steps", "tokens", "examples", "tokens_per_s")},
        "rl": _rl_report(rl_summary),
        "results": results_json(results),
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    failures = [
        row
        for agent in agents
        if agent != "teacher"
        for split in config.eval.splits
        for row in failure_rows(
            agent, split, read_trajectories(eval_store(out / "eval", agent, split))
        )
    ]
    (out / "report.md").write_text(render_run_report(report, results, failures))
    plot_results(results, out / "success.png")
    return report


def _train_sft(config: SFTConfig) -> Any:
    from trajgym.train.sft import train

    return train(config)


def _train_rl(config: RLConfig) -> Any:
    from trajgym.train.rl import train

    return train(config)


def _harvest_config(config: PipelineConfig) -> GenerateConfig:
    h = config.harvest
    return GenerateConfig(
        envs=[config.env],
        split="train",
        num_tasks=h.num_tasks,
        balance_families=h.balance_families,
        samples_per_task=h.samples_per_task,
        agent=h.teacher,
        seed=config.seed,
        output=config.harvest_path,
        concurrency=h.concurrency,
    )


def _agents(
    config: PipelineConfig, base: str, sft: TrainedModel, rl: TrainedModel | None
) -> dict[str, AgentSpec]:
    """The teacher (optionally), the base student, the SFT student, the SFT+RL student."""
    tokens = config.eval.max_new_tokens
    agents = {"base student": student(TrainedModel(student=base), tokens)}
    agents["sft student"] = student(sft, tokens)
    if rl is not None:
        agents["rl student"] = student(rl, tokens)
    if config.eval.teacher:
        agents = {"teacher": config.harvest.teacher, **agents}
    return agents


def _harvest_report(path: Path) -> dict[str, int]:
    """Counted from the store, so that a resumed run reports what a fresh one would."""
    stored = list(read_trajectories(path))
    return {"episodes": len(stored), "successes": sum(t.success for t in stored)}


def _rl_report(summary: Any) -> dict[str, Any] | None:
    if summary is None or not summary.get("history"):
        return None
    history = summary["history"]
    return {
        "steps": summary["steps"],
        "episodes": sum(h["episodes"] for h in history),
        "first_reward": history[0]["reward"],
        "last_reward": history[-1]["reward"],
    }
