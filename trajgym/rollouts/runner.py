"""Playing one episode by its key: the run's model clients, environments per thread, agents.

The local backend shares one :class:`EpisodeRunner` across its threads; each Ray worker
process builds its own from the run's config.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trajgym.agents.base import Agent
from trajgym.envs import make, tasks_of
from trajgym.envs.users.base import UserFactory
from trajgym.envs.users.llm import LLMUser, SimulatorStats
from trajgym.llm.cassette import episode_scope
from trajgym.llm.client import LLMClient
from trajgym.records.schema import Trajectory
from trajgym.records.store import Key
from trajgym.rollouts.config import AgentSpec, GenerateConfig
from trajgym.rollouts.rollout import rollout

if TYPE_CHECKING:
    from trajgym.agents.batching import Batcher
    from trajgym.agents.engine import Engine


def episode_seed(base: int, key: Key) -> int:
    """A stable per-episode seed: the same key always replays the same episode."""
    digest = hashlib.sha256(f"{base}|{key[0]}|{key[1]}|{key[2]}".encode()).hexdigest()
    return int(digest[:8], 16)


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
        spec = config.agent
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
        for env_id in config.env_ids():
            tasks_of(env_id, config.split)
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
            limit = {"max_episode_steps": config.max_turns} if config.max_turns else {}
            envs[key[0]] = make(key[0], split=config.split, user=self.user_factory, **limit)
        persona = None
        if config.personas:
            persona = config.personas[episode_seed(config.seed + 1, key) % len(config.personas)]
        agent = make_agent(config.agent, self.teacher, self.batcher)
        try:
            with episode_scope(key):  # one episode's calls are sequential: replayable
                t = rollout(
                    envs[key[0]],
                    agent,
                    seed=episode_seed(config.seed, key),
                    task_id=key[1],
                    persona=persona,
                    sample_index=key[2],
                )
        finally:
            if self.batcher is not None:
                agent.end()  # type: ignore[attr-defined]  # a student: its cache goes
                self.batcher.finished()
        if t.status == "error":
            # A reset that raised leaves gymnasium's env checker half-initialised, and the
            # next episode on this env would crash: start the next one on a fresh env.
            envs.pop(key[0]).close()
        self.simulator.add(episode_stats)
        return t, episode_stats

    def expect(self, episodes: int, slots: int) -> None:
        """``episodes`` will be played, ``slots`` at a time: the student then plays in lockstep.

        Its batches are then made by the episodes' keys, not by thread timing, so the same
        checkpoint replays the same episodes (see :mod:`trajgym.agents.batching`).
        """
        if self.batcher is not None:
            self.batcher.expect(episodes, slots)

    def close(self) -> None:
        """Stop the student's batcher, if any."""
        if self.batcher is not None:
            self.batcher.close()


def make_agent(
    spec: AgentSpec, client: LLMClient | None, batcher: Engine | Batcher | None = None
) -> Agent:
    """The agent ``spec`` describes (a student plays through the run's shared batcher)."""
    if spec.kind == "expert":
        from trajgym.agents.expert import ScriptedExpert

        return ScriptedExpert()
    if spec.kind in ("nothing", "random"):
        from trajgym.agents.baselines import DoNothingAgent, RandomToolAgent

        return DoNothingAgent() if spec.kind == "nothing" else RandomToolAgent()
    if spec.kind == "student":
        from trajgym.agents.student import StudentAgent, StudentConfig

        assert batcher is not None, "a student plays through the run's batcher"

        decoding = StudentConfig(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature)
        name = spec.student + (f"+{spec.adapter}" if spec.adapter else "")
        return StudentAgent(batcher.model, batcher.tokenizer, decoding, name, batcher=batcher)
    from trajgym.agents.teacher import LLMAgent

    assert spec.llm is not None and client is not None
    return LLMAgent(spec.llm, tool_mode=spec.tool_mode, client=client)


def _student_batcher(config: GenerateConfig) -> Engine | Batcher:
    """One model, shared by every episode through the local engine (slots = concurrency)."""
    from trajgym.agents.engine import local_engine
    from trajgym.agents.models import resolve_dtype

    spec = config.agent
    dtype = resolve_dtype(spec.dtype)
    model, tokenizer = loaded_student(spec.student, spec.adapter, dtype)
    return local_engine(
        model,
        tokenizer,
        slots=config.concurrency,
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
        seed=config.seed,
        dtype=dtype,
    )


_loaded: dict[tuple[Any, ...], tuple[Any, Any]] = {}  # the last student loaded, by its files


def loaded_student(student: str, adapter: str | None, dtype: str) -> tuple[Any, Any]:
    """The student's (model, tokenizer), kept while its files are unchanged.

    An agent evaluated on several places (test, ood, a held-out domain) is loaded once. The
    key holds each file's size and modification time, so a folder retrained in place loads
    again. Only the last student is kept; :func:`forget_loaded_students` drops it.
    """
    from trajgym.agents.models import DEFAULT_STUDENT, default_student_path, load_student

    key = (
        student,
        adapter,
        dtype,
        _files(student, DEFAULT_STUDENT, default_student_path),
        _files(adapter),
    )
    if key not in _loaded:
        forget_loaded_students()
        _loaded[key] = load_student(student, adapter=adapter, dtype=dtype)
    return _loaded[key]


def forget_loaded_students() -> None:
    """Let the kept student's memory go."""
    _loaded.clear()


def _files(name: str | None, default: str = "", default_path: Any = None) -> tuple[Any, ...]:
    if name is None:
        return ()
    folder = Path(default_path()) if name == default and default_path else Path(name)
    if not folder.is_dir():
        return ()
    return tuple(
        (str(p), p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    )


def _user_factory(
    client: LLMClient | None, stats: Callable[[], SimulatorStats]
) -> UserFactory | str:
    if client is None:
        return "scripted"

    def factory(task: Any, persona: Any, seed: int) -> LLMUser:
        return LLMUser(client, task, persona, seed, stats=stats())

    return factory
