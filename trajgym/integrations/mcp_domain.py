"""A domain made of an MCP server, a task file and an LLM judge: :class:`McpDomainEnv`.

For a server whose state trajgym cannot read back there is no gold state to compare: the
reward is the LLM judge's pass or fail (``LLMJudge``, graded against the rubric from the
task's ``goal.instruction``, the policy and the transcript). A judge that cannot grade
raises :class:`JudgeUnavailable`, an infrastructure failure that a rollout records as
``status="error"``, never as a 0.

The tools are the server's (:class:`~trajgym.integrations.mcp_toolkit.McpToolkit`); every
episode gets a fresh client session (a stdio server, a fresh process), opened by
``new_state`` and closed by ``end_episode``. The tasks come from a JSONL task file, read and
checked by :mod:`trajgym.envs.task_files`: a task's gold actions, if it has any, must run
cleanly on a fresh session when the file loads (they are not needed: the judge grades).
The user is trajgym's scripted user (it states each request in turn and stops; the domain
has no ``user.yaml`` of slots) or any user factory, e.g. an LLM user:
``functools.partial(LLMUser, LLMClient(config))``.

The env registers its id with gymnasium (``trajgym/Mcp.<task file>-v0`` unless told), as a
task file's env is, so that everything that makes an env by id finds it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import gymnasium

from trajgym.envs.base import ToolEnv
from trajgym.envs.spaces import Observation
from trajgym.envs.task_files import load_task_file, task_file_env_id
from trajgym.envs.users.base import UserFactory
from trajgym.errors import ConfigError, InfrastructureError
from trajgym.integrations.mcp_toolkit import McpServerSpec, McpToolkit
from trajgym.judges.judge import TaskInfo, TaskLookup
from trajgym.judges.llm_judge import LLMJudge
from trajgym.llm.client import LLMConfig
from trajgym.records.schema import (
    JudgeVerdict,
    Provenance,
    Split,
    Task,
    Trajectory,
    Verdict,
)

BASE_ID = "trajgym/Mcp-v0"
DEFAULT_POLICY = """\
# Assistant policy
You help one user with their request, using the tools. Be concise.
- Ask the user for what you need; do not guess ids, names or values.
- Before a change, say what you will do and ask the user to confirm. Proceed only after "yes".
- Tell the user what the tools showed. Never claim an action succeeded that the tools did not
  confirm.
"""


class JudgeUnavailable(InfrastructureError):
    """The LLM judge could not grade an episode (its provider failed, or no valid verdict)."""


class McpEpisode:
    """An episode's state as trajgym sees it: the task; the rest lives in the server."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id


class McpDomainEnv(ToolEnv[McpEpisode]):
    """An MCP server's tools, a task file's tasks, and the LLM judge's verdict as the reward."""

    env_id: ClassVar[str] = BASE_ID
    version: ClassVar[int] = 0
    accepts_task_files: ClassVar[bool] = False  # it always plays one, read in __init__

    def __init__(
        self,
        server: McpServerSpec | str,
        tasks: str | Path,
        judge: LLMConfig | dict[str, Any],
        split: str = "train",
        user: UserFactory | str = "scripted",
        persona: str | None = None,
        render_mode: str | None = None,
        env_id: str | None = None,
        policy: str = DEFAULT_POLICY,
        timeout_s: float = 30.0,
    ) -> None:
        """Connect to ``server``, load and check ``tasks``; the judge is asked at ``verify``.

        Args:
            server: The MCP server: a command line (stdio) or an ``http(s)://`` URL.
            tasks: A JSONL task file (:class:`~trajgym.records.schema.Task` per line).
            judge: The LLM judge's model (``LLMConfig`` or its fields).
            split: Which of the file's tasks to play.
            user: ``"scripted"`` or a user factory (an LLM user, say).
            persona: The user's persona (default: drawn at each reset).
            render_mode: ``"ansi"`` to render the transcript as text.
            env_id: The id trajectories record (default: from the task file's name).
            policy: The assistant's system prompt, which the judge also reads.
            timeout_s: Seconds a call to the server may take.
        """
        spec = McpServerSpec.parse(server) if isinstance(server, str) else server
        judge_config = judge if isinstance(judge, LLMConfig) else LLMConfig(**judge)
        played = env_id or task_file_env_id(BASE_ID, tasks)
        toolkit = self.mcp = McpToolkit(spec, timeout_s=timeout_s)
        # ToolEnv keeps a domain's toolkit and policy on the class, shared by its envs; this
        # env's come from its server and its arguments, so each instance holds its own.
        object.__setattr__(self, "toolkit", toolkit)
        object.__setattr__(self, "system_prompt", policy)
        try:
            super().__init__(split=split, user=user, persona=persona, render_mode=render_mode)
            self.id = played
            self._register(spec, tasks, judge_config)
            self.use_tasks(load_task_file(tasks, played, played, toolkit, self.new_state))
        except BaseException:
            toolkit.close()
            raise
        self.judge = LLMJudge(judge_config, lookup=_EnvLookup(self))
        self.judgement: JudgeVerdict | None = None  # the last episode's, once verified
        self._seed, self._persona = 0, ""

    def split_tasks(self, split: Split) -> Sequence[Task]:
        """Never asked: the task file's tasks are played instead."""
        return ()

    def new_state(self, task: Task) -> McpEpisode:
        """A fresh session with the server (unless this one is unused) for ``task``.

        Raises McpUnavailable (an infrastructure failure) if the server cannot be reached.
        """
        if not self.mcp.connected or self.mcp.history:
            self.mcp.reconnect()
        return McpEpisode(task.id)

    def digest(self, state: McpEpisode) -> str:
        """A hash of the calls this episode made, in order: the server's state is not readable."""
        calls = [state.task_id, *self.mcp.history]
        return hashlib.sha256(json.dumps(calls).encode()).hexdigest()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Start an episode on a fresh session with the server (see ``new_state``)."""
        self.judgement = None
        obs, info = super().reset(seed=seed, options=options)
        self._seed, self._persona = seed or 0, info["persona"]
        return obs, info

    def verify(self) -> Verdict:
        """The LLM judge's pass or fail as the reward; raises JudgeUnavailable if it cannot."""
        assert self.task is not None and self.state is not None
        verdict = self.judge.grade(self._trajectory())
        if verdict.status == "error":
            raise JudgeUnavailable(f"the LLM judge could not grade the episode: {verdict.error}")
        self.judgement = verdict
        findings = {f.criterion: f.passed for f in verdict.findings}
        return Verdict(
            reward=1.0 if verdict.passed else 0.0,
            state_match=findings.get("goal", bool(verdict.passed)),
            checks=findings,
            final_state_hash=self.digest(self.state),
        )

    def end_episode(self) -> None:
        """Close the episode's session (a stdio server's process ends with it)."""
        self.mcp.close()

    def close(self) -> None:
        """Close the session and the env."""
        self.mcp.close()
        super().close()

    def _trajectory(self) -> Trajectory:
        """The episode so far, as the judge reads it (it looks at the messages and task)."""
        assert self.task is not None
        return Trajectory(
            env_id=self.id,
            env_version=self.version,
            task_id=self.task.id,
            split=self.split,
            family=self.task.family,
            seed=self._seed,
            persona=self._persona,
            messages=tuple(self.transcript),
            termination="user_stop",
            provenance=Provenance(kind="teacher", agent="unknown (graded in the env)"),
        )

    def _register(self, server: McpServerSpec, tasks: str | Path, judge: LLMConfig) -> None:
        """Register this env's id (the scripted user finds its domain through it)."""
        kwargs = {"server": server, "tasks": str(Path(tasks).resolve()), "judge": judge}
        existing = gymnasium.registry.get(self.id)
        if existing is None:
            gymnasium.register(
                id=self.id,
                entry_point=f"{__name__}:{type(self).__name__}",
                max_episode_steps=30,
                kwargs={**kwargs, "env_id": self.id},
            )
        elif any(existing.kwargs.get(k) != v for k, v in kwargs.items()):
            raise ConfigError(
                f"{self.id} is already registered for another server, task file or judge; "
                "pass another env_id (or rename the task file)."
            )


class _EnvLookup(TaskLookup):
    """The judge's view of this env's tasks (the default lookup makes envs by id)."""

    def __init__(self, env: McpDomainEnv) -> None:
        super().__init__()
        self._env = env

    def info(self, t: Trajectory) -> TaskInfo:
        env = self._env
        writes = frozenset(name for name, tool in env.toolkit.tools.items() if tool.writes)
        return TaskInfo(env.task_by_id(t.task_id), env.system_prompt, writes, frozenset())
