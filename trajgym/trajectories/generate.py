"""Generate trajectories at high concurrency into a resumable store.

Episodes are keyed (env, task, sample); the ones already in the store are skipped, so
re-running the same command after a crash finishes the job without losing or repeating an
episode. Each worker thread owns its environments (gymnasium envs are not thread-safe);
model clients are shared, with their own concurrency limits.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from trajgym.agents.base import Agent
from trajgym.agents.cassette import episode_scope
from trajgym.agents.llm import LLMClient, LLMConfig
from trajgym.config import save_config
from trajgym.envs import make
from trajgym.envs.users.base import UserFactory, get_persona
from trajgym.envs.users.llm import LLMUser, SimulatorStats
from trajgym.trajectories.rollout import rollout
from trajgym.trajectories.schema import Trajectory, Usage
from trajgym.trajectories.store import Key, TrajectoryStore


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
    split: Literal["train", "test", "ood"] = Field("train", description="Task split.")
    families: list[str] | None = Field(None, description="Only tasks of these families.")
    num_tasks: int | None = Field(None, ge=1, description="First N tasks per env (all if unset).")
    first_task: int = Field(
        0, ge=0, description="Skip this many tasks per env first (e.g. those another run used)."
    )
    samples_per_task: int = Field(1, ge=1, description="Episodes per task.")
    teacher: AgentSpec = Field(default_factory=lambda: AgentSpec(), description="The assistant.")
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
    max_steps: int | None = Field(
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
    def _record_or_replay(self) -> GenerateConfig:
        if self.record is not None and self.replay is not None:
            raise ValueError("set either 'record' or 'replay', not both")
        return self


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


def episode_seed(base: int, key: Key) -> int:
    """A stable per-episode seed: the same key always replays the same episode."""
    digest = hashlib.sha256(f"{base}|{key[0]}|{key[1]}|{key[2]}".encode()).hexdigest()
    return int(digest[:8], 16)


def plan(config: GenerateConfig) -> list[Key]:
    """Every (env, task, sample) the run must produce, longest tasks first.

    Starting the longest episodes first keeps every slot busy until the end of the run
    instead of leaving a tail of long episodes running alone (longest-processing-time first).
    """
    jobs: list[tuple[int, Key]] = []
    for env_id in config.envs:
        env = make(env_id, split=config.split).unwrapped
        tasks = [
            t
            for t in env.tasks(config.split)  # type: ignore[attr-defined]
            if config.families is None or t.family in config.families
        ][config.first_task :][: config.num_tasks]
        for t in tasks:
            size = len(t.gold_actions) + 3 * len(t.goal.intents)
            jobs += [(size, (env_id, t.id, s)) for s in range(config.samples_per_task)]
    return [key for _, key in sorted(jobs, key=lambda job: -job[0])]


class EpisodeRunner:
    """Plays episodes by key: the run's model clients, and environments per thread.

    Thread-safe; the local backend shares one across its threads, and each Ray worker
    process builds its own from the config. Simulated users' turns and faults are counted
    per episode (:meth:`play_counted`) and into ``simulator``, the run's total.
    """

    def __init__(self, config: GenerateConfig, simulator: SimulatorStats) -> None:
        self.config = config
        self.simulator = simulator
        cassette = {"record": config.record, "replay": config.replay}
        spec = config.teacher
        self.teacher = LLMClient(spec.llm.with_cassette(**cassette)) if spec.llm else None
        users = (
            LLMClient(config.user.llm.with_cassette(**cassette))
            if config.user.kind == "litellm" and config.user.llm
            else None
        )
        self.user_factory = _user_factory(users, lambda: self._local.simulator)
        self.batcher = _student_batcher(config) if spec.kind == "student" else None
        self._local = threading.local()
        # Build each env's world and task list once, here: its threads would otherwise all
        # miss the (unlocked) caches together at their first reset and build them each.
        for env_id in config.envs:
            make(env_id, split=config.split).unwrapped.tasks(config.split)  # type: ignore[attr-defined]
        if self.teacher is not None or users is not None:
            import litellm  # noqa: F401  (seconds: before the first episode, not during)

    def play(self, key: Key) -> Trajectory:
        """One episode (environment errors and provider failures end up in the record)."""
        return self.play_counted(key)[0]

    def play_counted(self, key: Key) -> tuple[Trajectory, SimulatorStats]:
        """One episode, and its simulated user's turns and faults."""
        config = self.config
        self._local.simulator = episode_stats = SimulatorStats()
        envs = self._local.__dict__.setdefault("envs", {})
        if key[0] not in envs:
            limit = {"max_episode_steps": config.max_steps} if config.max_steps else {}
            envs[key[0]] = make(key[0], split=config.split, user=self.user_factory, **limit)
        persona = None
        if config.personas:
            persona = config.personas[episode_seed(config.seed + 1, key) % len(config.personas)]
        with episode_scope(key):  # one episode's calls are sequential: replayable
            t = rollout(
                envs[key[0]],
                _make_agent(config.teacher, self.teacher, self.batcher),
                seed=episode_seed(config.seed, key),
                task_id=key[1],
                persona=persona,
                sample_index=key[2],
            )
        if t.status == "error":
            # A reset that raised leaves gymnasium's env checker half-initialised, and the
            # next episode on this env would crash: start the next one on a fresh env.
            envs.pop(key[0]).close()
        self.simulator.add(episode_stats)
        return t, episode_stats

    def close(self) -> None:
        """Stop the student's batcher, if any."""
        if self.batcher is not None:
            self.batcher.close()


def generate(config: GenerateConfig, show_progress: bool = True) -> GenerateReport:
    """Run (or resume) a generation; returns the report, also saved beside the output."""
    started = time.perf_counter()
    save_config(config, config.output.with_suffix(".config.yaml"))
    report = GenerateReport()
    with TrajectoryStore(config.output) as store:
        keys = plan(config)
        todo = [k for k in keys if k not in store]
        report.planned, report.skipped = len(keys), len(keys) - len(todo)

        def keep(t: Trajectory) -> None:
            if store.append(t):  # the one writer: each key lands once, whoever played it
                report.add(t)

        report.playing_since = time.perf_counter()  # a backend resets it once set up
        # Nothing to play: no model to load, no cluster to start.
        if todo and config.backend == "ray":
            from trajgym.trajectories.ray_backend import play_on_ray

            play_on_ray(config, todo, keep, report, show_progress)
        elif todo:
            runner = EpisodeRunner(config, report.simulator)
            report.playing_since = time.perf_counter()
            try:
                _run_all(
                    lambda key: keep(runner.play(key)),
                    todo,
                    config,
                    report,
                    show_progress,
                )
            finally:
                runner.close()
        ended = time.perf_counter()
        report.episodes_wall_s = ended - report.playing_since
        report.drain_s = ended - report.all_started if report.all_started else 0.0
    report.wall_s = time.perf_counter() - started
    summary = config.output.with_suffix(".summary.json")
    summary.write_text(json.dumps(report.as_dict(), indent=1))
    return report


def _run_all(
    run: Callable[[Key], None],
    todo: list[Key],
    config: GenerateConfig,
    report: GenerateReport,
    show_progress: bool,
) -> None:
    """Keep ``concurrency`` episodes in flight; stop at the first unexpected exception."""
    progress = generation_progress("generate", show_progress)
    concurrency = config.concurrency
    with progress, ThreadPoolExecutor(max_workers=concurrency) as pool:
        bar = progress.add_task("episodes", total=len(todo), stats=report.line())
        pending: set[Future[None]] = set()
        queue: Iterator[Key] = iter(todo)
        ramp = config.ramp_s / concurrency
        for n, key in enumerate(itertools.islice(queue, concurrency)):
            pending.add(pool.submit(_after, n * ramp, run, key))
        started = len(pending)
        if started == len(todo):
            report.all_started = time.perf_counter() + (started - 1) * ramp
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED, timeout=0.25)
            for future in done:
                future.result()  # a bug, not a provider fault: stop loudly
                next_key = next(queue, None)
                if next_key is not None:
                    pending.add(pool.submit(run, next_key))
                    started += 1
                    if started == len(todo):
                        report.all_started = time.perf_counter()
            progress.update(bar, completed=report.written, stats=report.line())


def _after(delay_s: float, run: Callable[[Key], None], key: Key) -> None:
    time.sleep(delay_s)
    run(key)


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


def _make_agent(spec: AgentSpec, client: LLMClient | None, batcher: Any = None) -> Agent:
    if spec.kind == "expert":
        from trajgym.agents.expert import ScriptedExpert

        return ScriptedExpert()
    if spec.kind in ("nothing", "random"):
        from trajgym.agents.baselines import DoNothingAgent, RandomToolAgent

        return DoNothingAgent() if spec.kind == "nothing" else RandomToolAgent()
    if spec.kind == "student":
        from trajgym.agents.student import StudentAgent, StudentConfig

        decoding = StudentConfig(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature)
        name = spec.student + (f"+{spec.adapter}" if spec.adapter else "")
        return StudentAgent(batcher.model, batcher.tokenizer, decoding, name, batcher=batcher)
    from trajgym.agents.teacher import LLMAgent

    assert spec.llm is not None and client is not None
    return LLMAgent(spec.llm, tool_mode=spec.tool_mode, client=client)


def _student_batcher(config: GenerateConfig) -> Any:
    """One model, shared by every episode through a batcher (batch = concurrency)."""
    from trajgym.agents.batching import Batcher
    from trajgym.agents.models import load_student

    spec = config.teacher
    model, tokenizer = load_student(spec.student, adapter=spec.adapter)
    return Batcher(
        model,
        tokenizer,
        max_batch=min(config.concurrency, 16),
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
    )


def _user_factory(
    client: LLMClient | None, stats: Callable[[], SimulatorStats]
) -> UserFactory | str:
    if client is None:
        return "scripted"

    def factory(task: Any, persona: Any, seed: int) -> LLMUser:
        return LLMUser(client, task, persona, seed, stats=stats())

    return factory
