"""``trajgym compare``: how much does a teacher's data help, against the student's own?

From one base model, students are trained on the same budget of trajectories from each
source, then evaluated side by side in the same environments:

- ``teacher``: trajectories harvested from the teacher (kept by verifier and/or judge);
- ``self``: the student's own episodes, k per task, kept by verifier and/or judge
  (rejection sampling / expert iteration);
- ``on_policy``: the student's own episodes labelled by the teacher at every state the
  student reached (DAgger-style on-policy distillation).

The student that plays for ``self`` and ``on_policy`` (the generator) is by default the one
this run trains on the teacher's data: a student first has to be able to act at all. Every
stage resumes. The report (Markdown, JSON, plot) gives success with 95% CIs and pass^k
in-distribution, out-of-distribution and on a held-out domain, and data statistics per
source (turns, tool calls, distinct tool sequences, tokens, episodes generated, cost).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trajgym.experiments.report import data_statistics, plot_results, render_compare_report
from trajgym.experiments.stages import (
    EvalStage,
    Place,
    Results,
    check_stage,
    evaluate,
    results_json,
    student,
    train_once,
)
from trajgym.judges.calibration import JudgeConfig
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec
from trajgym.rollouts.selfgen import Keep, SelfGenConfig, self_generate
from trajgym.train.common import TrainedModel
from trajgym.train.sft import SFTConfig, SFTSettings

Source = Literal["teacher", "self", "on_policy"]


class RolloutStage(BaseModel):
    """How the generator student plays the episodes that self and on-policy data come from."""

    model_config = ConfigDict(extra="forbid")

    samples_per_task: int = Field(4, ge=1, description="Episodes per task (k).")
    temperature: float = Field(1.0, ge=0.0, description="Sampling temperature.")
    max_tasks: int = Field(160, ge=1, description="Most train tasks to play.")
    tasks_per_round: int = Field(16, ge=1, description="Tasks added per round until the budget.")
    max_new_tokens: int = Field(96, ge=1, description="Reply length limit.")
    max_turns: int = Field(12, ge=1, description="Agent steps before an episode is cut.")
    concurrency: int = Field(8, ge=1, description="Episodes in flight (= the student's batch).")


class CompareEval(EvalStage):
    """Where the students are compared: the run's held-out splits and a held-out domain."""

    heldout_env: str | None = Field(
        "trajgym/Airline-v0", description="A domain no student trained on (None: skip)."
    )
    heldout_families: list[str] | None = Field(
        ["flight_status", "transfer_to_human"], description="Its task families (None: all)."
    )
    heldout_tasks: int = Field(12, ge=1, description="Held-out domain tasks.")
    base: bool = Field(True, description="Also evaluate the untrained base student.")


class CompareConfig(BaseModel):
    """A comparison of data sources at a matched budget."""

    model_config = ConfigDict(extra="forbid")

    env: str = Field("trajgym/RetailLite-v0", description="Environment id (train and eval).")
    output_dir: Path = Field(Path("runs/compare"), description="Everything the run writes.")
    seed: int = Field(0, description="Seed for generation and training.")
    budget: int = Field(64, ge=1, description="Trajectories per source (matched).")
    sources: list[Source] = Field(
        ["teacher", "self", "on_policy"], min_length=1, description="Data sources to compare."
    )
    teacher: AgentSpec = Field(default_factory=lambda: AgentSpec(), description="The teacher.")
    keep: Keep = Field("both", description="Keep teacher / self data by verifier, judge, both.")
    judge: JudgeConfig = Field(default_factory=lambda: JudgeConfig(), description="The judge.")
    generator: str | None = Field(
        None,
        description="Student model that plays for self / on-policy data (None: the student "
        "this run trains on the teacher's data).",
    )
    generator_adapter: str | None = Field(None, description="peft adapter for the generator.")
    rollouts: RolloutStage = Field(default_factory=lambda: RolloutStage(), description="Play.")
    sft: SFTSettings = Field(
        default_factory=lambda: SFTSettings(), description="How every student is fine-tuned."
    )
    eval: CompareEval = Field(default_factory=lambda: CompareEval(), description="Evaluation.")
    smoke: list[str] = Field(
        default_factory=list, description="Overrides (key=value) applied by --smoke."
    )

    @model_validator(mode="after")
    def _sft_is_valid(self) -> CompareConfig:
        check_stage("sft", lambda: self.sft_config("teacher", Path("teacher.jsonl")))
        return self

    def sft_config(self, name: str, data: Path) -> SFTConfig:
        """The SFT run of one student: same base and settings for every source."""
        seed = {} if "seed" in self.sft.model_fields_set else {"seed": self.seed}
        fields = self.sft.model_dump(exclude_unset=True) | seed
        fields |= {"data": [data], "output_dir": self.output_dir / "students" / name}
        return SFTConfig.model_validate(fields)


def run_compare(config: CompareConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every stage; returns the report, also written to the output folder."""
    out = config.output_dir
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    pools: dict[str, Path] = {"teacher": data / "teacher.jsonl"}
    self_generate(_sampling(config, config.teacher, pools["teacher"], None, 0, 1), show_progress)
    lap("harvest_s")

    generator = _generator(config, pools["teacher"])
    lap("generator_sft_s")
    # The generator plays train tasks the teacher's harvest did not use.
    harvested = len({t.task_id for t in read_trajectories(data / "teacher.rollouts.jsonl")})
    play = _sampling(config, generator, data / "self.jsonl", "self", harvested, None)
    if {"self", "on_policy"} & set(config.sources):
        self_generate(play, show_progress)
        pools["self"] = play.output
    lap("rollouts_s")
    if "on_policy" in config.sources:
        from trajgym.rollouts.onpolicy import label_file

        pools["on_policy"] = data / "on_policy.jsonl"
        label_file(play.rollouts_path, pools["on_policy"], config.teacher, config.budget)
    lap("labels_s")

    available = {s: _count(pools[s]) for s in config.sources}
    trainable = [s for s in config.sources if available[s]]  # a source may yield nothing
    matched = min((available[s] for s in trainable), default=0)
    students: dict[str, TrainedModel] = {}
    for source in trainable:
        train_file = data / f"train-{source}.jsonl"
        _first(pools[source], train_file, matched)
        students[source] = _train(config, source, train_file, matched)
        lap(f"sft_{source}_s")

    results = _evaluate_all(config, students, show_progress)
    lap("eval_s")
    report = {
        "env": config.env,
        "k": config.eval.k,
        "budget": config.budget,
        "matched_budget": matched,
        "available": available,
        "keep": config.keep,
        "generator": generator.student + (f"+{generator.adapter}" if generator.adapter else ""),
        "data": {
            s: data_statistics(
                config.sft_config(s, data / f"train-{s}.jsonl"),
                _generated(config, s, play),
                str(students[s].folder),
            )
            for s in trainable
        },
        "results": results_json(results),
        "timings": timings,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render_compare_report(report, results))
    plot_results(results, out / "success.png")
    return report


def _sampling(
    config: CompareConfig,
    agent: AgentSpec,
    output: Path,
    provenance: Literal["self"] | None,
    first_task: int,
    samples: int | None,
) -> SelfGenConfig:
    """Episodes by ``agent`` on train tasks until ``budget`` are kept."""
    r = config.rollouts
    return SelfGenConfig(
        env=config.env,
        agent=agent,
        samples_per_task=samples or r.samples_per_task,
        first_task=first_task,
        max_tasks=config.budget * 4 if samples == 1 else r.max_tasks,
        tasks_per_round=config.budget if samples == 1 else r.tasks_per_round,
        target=config.budget,
        keep=config.keep,
        judge=config.judge,
        provenance=provenance,
        seed=config.seed,
        output=output,
        concurrency=64 if agent.kind == "expert" else r.concurrency,
        max_turns=r.max_turns,
    )


def _generator(config: CompareConfig, teacher_data: Path) -> AgentSpec:
    """The student that plays for self / on-policy data (trained here unless given)."""
    r = config.rollouts
    if config.generator:
        model = TrainedModel(student=config.generator, adapter=config.generator_adapter)
    else:
        model = _trained(config.sft_config("generator", teacher_data))
    return student(model, r.max_new_tokens, r.temperature)


def _train(config: CompareConfig, source: str, data: Path, matched: int) -> TrainedModel:
    """Train one source's student (the generator is reused when it is that very student)."""
    sft = config.sft_config(source, data)
    teacher_pool = config.output_dir / "data" / "teacher.jsonl"
    if source == "teacher" and config.generator is None and _count(teacher_pool) == matched:
        sft = config.sft_config("generator", teacher_pool)  # the very same training
    return _trained(sft)


def _trained(sft: SFTConfig) -> TrainedModel:
    """Run an SFT unless it finished before; where its student is."""

    def train() -> Any:
        from trajgym.train.sft import train

        return train(sft)

    train_once(sft.output_dir, train)
    return sft.trained()


def _evaluate_all(
    config: CompareConfig, students: dict[str, TrainedModel], show_progress: bool
) -> Results:
    e = config.eval
    base = TrainedModel(student=config.sft_config("base", Path()).model)
    agents: dict[str, AgentSpec] = {}
    if e.teacher:
        agents["teacher"] = config.teacher
    if e.base:
        agents["base student"] = student(base, e.max_new_tokens)
    for source, trained in students.items():
        agents[f"{source} student"] = student(trained, e.max_new_tokens)
    places = [Place(env=config.env, split=s, label=s, num_tasks=e.num_tasks) for s in e.splits]
    if e.heldout_env:
        name = f"{e.heldout_env.split('/')[-1]} (held-out domain)"
        places.append(
            Place(
                env=e.heldout_env,
                split="test",
                label=name,
                num_tasks=e.heldout_tasks,
                families=e.heldout_families,
            )
        )
    return evaluate(agents, places, e, config.output_dir / "eval", config.seed, show_progress)


def _generated(config: CompareConfig, source: str, play: SelfGenConfig) -> Path:
    """The file of every episode generated to obtain a source's data (kept or not)."""
    if source == "teacher":
        return config.output_dir / "data" / "teacher.rollouts.jsonl"
    if source == "on_policy":
        return config.output_dir / "data" / "on_policy.jsonl"
    return play.rollouts_path


def _count(path: Path) -> int:
    return sum(1 for t in read_trajectories(path) if t.status == "ok")


def _first(pool: Path, target: Path, n: int) -> None:
    """Write the pool's first ``n`` usable trajectories (the matched budget) to ``target``."""
    kept = [t for t in read_trajectories(pool) if t.status == "ok"][:n]
    target.write_text("".join(t.model_dump_json() + "\n" for t in kept))
