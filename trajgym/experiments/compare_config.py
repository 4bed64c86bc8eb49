"""What a ``trajgym compare`` run is: its sources, budgets, teachers, and how each stage runs."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trajgym.experiments.stages import EvalStage, check_stage
from trajgym.judges.calibration import JudgeConfig
from trajgym.rollouts.config import AgentSpec
from trajgym.rollouts.selfgen import Keep
from trajgym.train.common import TrainedModel
from trajgym.train.discriminator import DiscriminatorConfig
from trajgym.train.rl import RLConfig, RLSettings
from trajgym.train.sft import SFTConfig, SFTSettings

Source = Literal[
    "teacher", "rationale", "logit_kd", "self", "on_policy", "dagger", "opd", "gad", "sft+rl"
]
"""Where a student's training comes from (see the module docstring of ``compare``)."""

WHITE_BOX: tuple[Source, ...] = ("logit_kd", "opd")
"""Sources that read the teacher's next-token distributions: they need ``white_box``."""


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


class DaggerStage(BaseModel):
    """DAgger as published: rounds of (student plays, teacher labels, train on all so far)."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(2, ge=1, description="Rounds of play, label, retrain.")
    demo_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of the budget that is the teacher's own demonstrations (round 0, "
        "which also trains the first player); the rest are on-policy labels, split evenly "
        "over the rounds.",
    )


class LogitKDStage(BaseModel):
    """How logit_kd students match the white-box teacher's distributions."""

    model_config = ConfigDict(extra="forbid")

    top_k: int = Field(20, ge=1, description="The teacher's top k tokens (plus a rest bucket).")
    weight: float = Field(0.5, ge=0, le=1, description="Weight of the KL against cross-entropy.")


class OPDStage(BaseModel):
    """How opd students turn the white-box teacher's scores into advantages."""

    model_config = ConfigDict(extra="forbid")

    coef: float = Field(1.0, ge=0, description="Weight of log p_teacher - log p_student.")
    reward_coef: float = Field(0.0, ge=0, description="Weight of the reward's group advantage.")


class GADStage(BaseModel):
    """How gad students learn from a discriminator that tells the teacher's turns from theirs.

    Black-box: the teacher only labels the states the student reached with text (as for
    on-policy data); the discriminator, the base student with a scalar head, is trained
    alternately with the student, and its score on each student turn is that turn's reward.
    """

    model_config = ConfigDict(extra="forbid")

    discriminator: DiscriminatorConfig = Field(
        default_factory=lambda: DiscriminatorConfig(),
        description="The discriminator (its model: the base student when unset).",
    )
    success_coef: float = Field(
        0.0, ge=0, description="Weight of the verified reward beside the discriminator's."
    )


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
    """A comparison of data sources and methods at matched budgets."""

    model_config = ConfigDict(extra="forbid")

    env: str = Field("trajgym/RetailLite-v0", description="Environment id (train and eval).")
    output_dir: Path = Field(
        Path("runs/compare"), description="Work files: weights, episodes, evaluation stores."
    )
    results_dir: Path | None = Field(
        None,
        description="The run's results, small enough to commit (cells, data pools, report); "
        "a run resumes from it on any machine (None: <output_dir>/results).",
    )
    students_dir: str = Field(
        "students", description="Where under output_dir the students train (one per seed)."
    )
    noise_floor: bool = Field(
        False,
        description="Also train output imitation at the largest budget with another seed, "
        "and evaluate it twice with sampling at two seeds: how much outcomes move by chance.",
    )
    noise_floor_temperature: float = Field(
        1.0, gt=0, description="Sampling temperature of the noise floor's two evaluations."
    )
    seed: int = Field(0, description="Seed for generation and training.")
    budget: int = Field(64, ge=1, description="Trajectories per source (matched).")
    budgets: list[int] | None = Field(
        None,
        min_length=1,
        description="A budget sweep: every source trained at each of these (None: [budget]).",
    )
    sources: list[Source] = Field(
        ["teacher", "self", "on_policy"], min_length=1, description="Sources to compare."
    )
    teacher: AgentSpec = Field(default_factory=lambda: AgentSpec(), description="The teacher.")
    white_box: TrainedModel | None = Field(
        None,
        description="The white-box teacher of logit_kd and opd: a local model sharing the "
        "student's tokenizer (e.g. a trajgym-trained checkpoint of the default student).",
    )
    keep: Keep = Field("both", description="Keep teacher / self data by verifier, judge, both.")
    judge: JudgeConfig = Field(default_factory=lambda: JudgeConfig(), description="The judge.")
    generator: str | None = Field(
        None,
        description="Student model that plays for self / on-policy data (None: the student "
        "this run trains on the teacher's data, at the largest budget).",
    )
    generator_adapter: str | None = Field(None, description="peft adapter for the generator.")
    rollouts: RolloutStage = Field(default_factory=lambda: RolloutStage(), description="Play.")
    dagger: DaggerStage = Field(default_factory=lambda: DaggerStage(), description="DAgger.")
    logit_kd: LogitKDStage = Field(default_factory=lambda: LogitKDStage(), description="KD.")
    opd: OPDStage = Field(default_factory=lambda: OPDStage(), description="On-policy distill.")
    gad: GADStage = Field(default_factory=lambda: GADStage(), description="Black-box OPD.")
    sft: SFTSettings = Field(
        default_factory=lambda: SFTSettings(), description="How every student is fine-tuned."
    )
    rl: RLSettings = Field(
        default_factory=lambda: RLSettings(),
        description="How opd and sft+rl train (their iterations follow from the budget: "
        "iterations x tasks_per_step x group_size episodes = the budget).",
    )
    eval: CompareEval = Field(default_factory=lambda: CompareEval(), description="Evaluation.")
    smoke: list[str] = Field(
        default_factory=list, description="Overrides (key=value) applied by --smoke."
    )

    @model_validator(mode="after")
    def _stages_are_valid(self) -> CompareConfig:
        check_stage("sft", lambda: self.sft_config("teacher", Path("teacher.jsonl")))
        check_stage("rl", lambda: self.rl_config("opd", "base", 1, with_teacher=False))
        needs = [s for s in self.sources if s in WHITE_BOX]
        if needs and self.white_box is None:
            raise ValueError(
                f"sources {needs} need a white-box teacher: set white_box: {{student: <path>}} "
                "(a local model sharing the student's tokenizer)."
            )
        return self

    @property
    def results_root(self) -> Path:
        """Where cells, pools and the report go: ``results_dir``, else ``output_dir/results``."""
        return self.results_dir or self.output_dir / "results"

    def with_seed(self, seed: int | None) -> CompareConfig:
        """The same run with students trained at another seed, in their own folders."""
        if seed is None:
            return self
        sft = self.sft.model_copy(update={"seed": seed})
        rl = self.rl.model_copy(update={"seed": seed})
        return self.model_copy(update={"sft": sft, "rl": rl, "students_dir": f"students-s{seed}"})

    @property
    def budget_list(self) -> list[int]:
        """The budgets trained at, smallest first."""
        return sorted(set(self.budgets or [self.budget]))

    def sft_config(self, name: str, data: Path, distill: bool = False) -> SFTConfig:
        """The SFT run of one student: same base and settings for every source."""
        seed = {} if "seed" in self.sft.model_fields_set else {"seed": self.seed}
        fields = self.sft.model_dump(exclude_unset=True) | seed
        fields |= {"data": [data], "output_dir": self.output_dir / self.students_dir / name}
        if distill and self.white_box is not None:
            fields["distill"] = self.logit_kd.model_dump() | {
                "teacher": self.white_box.student,
                "adapter": self.white_box.adapter,
            }
        return SFTConfig.model_validate(fields)

    def rl_config(
        self, name: str, start: TrainedModel | str, episodes: int, with_teacher: bool
    ) -> RLConfig:
        """The RL run of one student (opd or sft+rl): ``episodes`` episodes from ``start``."""
        if isinstance(start, str):
            start = TrainedModel(student=start)
        per_step = self.rl.tasks_per_step * self.rl.group_size
        fields = self.rl.model_dump(exclude_unset=True)
        fields |= {
            "model": start.student,
            "adapter": start.adapter,
            "envs": [self.env],
            "iterations": max(1, -(-episodes // per_step)),
            "output_dir": self.output_dir / self.students_dir / name,
        }
        fields.setdefault("seed", self.seed)
        if with_teacher and self.white_box is not None:
            fields["teacher"] = self.opd.model_dump() | {
                "model": self.white_box.student,
                "adapter": self.white_box.adapter,
            }
        return RLConfig.model_validate(fields)
