"""What a generation run is: who plays the assistant and the user, on which tasks, how fast."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trajgym.envs.task_files import register_task_file
from trajgym.envs.users.base import get_persona
from trajgym.llm.client import LLMConfig
from trajgym.records.schema import Split

StudentDtype = Literal["auto", "float32", "bfloat16", "float16"]  # auto: bf16 where native


class AgentSpec(BaseModel):
    """The agent that plays the assistant."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["expert", "litellm", "student", "nothing", "random"] = Field(
        "expert", description="Scripted expert, an LLM, a local student, or a floor baseline."
    )
    llm: LLMConfig | None = Field(None, description="Model settings when kind is 'litellm'.")
    tool_mode: Literal["native", "text"] = Field("native", description="How tools reach the LLM.")
    student: str = Field(
        "smollm2-135m-instruct", description="Student model path or id (kind 'student')."
    )
    adapter: str | None = Field(None, description="peft adapter folder for the student.")
    max_new_tokens: int = Field(256, gt=0, description="Student reply length limit.")
    temperature: float = Field(0.0, ge=0.0, description="Student sampling temperature.")
    dtype: StudentDtype = Field(
        "auto",
        description="Student weights and KV caches: auto is bfloat16 where the machine computes "
        "it natively (avx512_bf16, AMX, a GPU), else float32.",
    )

    @model_validator(mode="after")
    def _llm_needs_config(self) -> AgentSpec:
        if self.kind == "litellm" and self.llm is None:
            raise ValueError("kind 'litellm' needs an 'llm' section with at least 'model'")
        return self


class UserSpec(BaseModel):
    """Who plays the user."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["scripted", "litellm"] = Field("scripted", description="Scripted or an LLM.")
    llm: LLMConfig | None = Field(None, description="Model settings when kind is 'litellm'.")

    @model_validator(mode="after")
    def _llm_needs_config(self) -> UserSpec:
        if self.kind == "litellm" and self.llm is None:
            raise ValueError("kind 'litellm' needs an 'llm' section with at least 'model'")
        return self


class GenerateConfig(BaseModel):
    """A generation run."""

    model_config = ConfigDict(extra="forbid")

    envs: list[str] = Field(["trajgym/Retail-v1"], description="Environment ids.")
    tasks: Path | None = Field(
        None,
        description="Play this JSONL task file's tasks instead of the env's own (one env; "
        "each task is checked first: gold actions, and the scripted expert solves it).",
    )
    split: Split = Field(
        "train",
        description="Task split: train (harvest and train on it); test and ood are held out.",
    )
    families: list[str] | None = Field(None, description="Only tasks of these families.")
    num_tasks: int | None = Field(None, ge=1, description="First N tasks per env (all if unset).")
    balance_families: bool = Field(
        False, description="Take the tasks family by family in turn, so N holds them equally."
    )
    first_task: int = Field(
        0, ge=0, description="Skip this many tasks per env first (e.g. those another run used)."
    )
    samples_per_task: int = Field(1, ge=1, description="Episodes per task.")
    agent: AgentSpec = Field(
        default_factory=lambda: AgentSpec(), description="Who plays the assistant."
    )
    user: UserSpec = Field(default_factory=lambda: UserSpec(), description="The simulated user.")
    personas: list[str] | None = Field(None, description="Personas to cycle (env's if unset).")
    seed: int = Field(0, description="Base seed; each episode's seed derives from it and its key.")
    output: Path = Field(Path("runs/generate/trajectories.jsonl"), description="JSONL store.")
    concurrency: int = Field(64, ge=1, le=4096, description="Episodes in flight at once.")
    ramp_s: float = Field(
        0.0,
        ge=0.0,
        description="Start the first `concurrency` episodes evenly over this many seconds "
        "(a spawn rate): the provider and the client see a stream of calls, not one burst.",
    )
    max_turns: int | None = Field(
        None, ge=1, description="Truncate episodes after this many agent steps (env's if unset)."
    )
    backend: Literal["local", "ray"] = Field(
        "local", description="Play episodes on this machine's threads, or on a Ray cluster."
    )
    ray_address: str | None = Field(
        None, description="Ray cluster to join ('auto', 'ray://host:10001'); None: start one."
    )
    ray_workers: int | None = Field(
        None,
        ge=1,
        description="Ray worker processes (actors) sharing the episodes; None: one per CPU "
        "of the cluster.",
    )
    ray_worker_cpus: float = Field(
        1.0, gt=0, description="CPUs Ray reserves per worker (lower: more workers per node)."
    )
    record: Path | None = Field(
        None, description="Record every LLM call of the run (teacher, user) into this cassette."
    )
    replay: Path | None = Field(
        None, description="Answer every LLM call of the run from this cassette, offline."
    )

    @model_validator(mode="after")
    def _known_personas(self) -> GenerateConfig:
        for name in self.personas or ():
            get_persona(name)
        return self

    @model_validator(mode="after")
    def _one_env_for_a_task_file(self) -> GenerateConfig:
        if self.tasks is not None and len(self.envs) != 1:
            raise ValueError("a task file ('tasks') is played in exactly one env")
        return self

    def env_ids(self) -> list[str]:
        """The ids the run's episodes play under: a task file's own id, or ``envs``.

        Registers the task file's env in this process (each Ray worker calls it too).
        """
        if self.tasks is None:
            return list(self.envs)
        return [register_task_file(self.envs[0], self.tasks)]

    @model_validator(mode="after")
    def _record_or_replay(self) -> GenerateConfig:
        if self.record is not None and self.replay is not None:
            raise ValueError("set either 'record' or 'replay', not both")
        return self
