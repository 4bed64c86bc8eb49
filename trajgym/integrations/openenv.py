"""Any trajgym environment as an OpenEnv ``Environment``, with its typed models and client.

OpenEnv (``openenv-core``) serves an ``Environment`` over HTTP and a WebSocket: each
WebSocket connection is a session with its own environment instance. Here that instance
wraps a trajgym :class:`~trajgym.envs.base.ToolEnv`:

- the action (:class:`TrajgymAction`) is the assistant's message: text and/or OpenAI-style
  tool calls;
- the observation (:class:`TrajgymObservation`) is the new messages it caused (tool results,
  the simulated user's reply), the reward, ``done``, and at the end the verified
  :class:`~trajgym.records.schema.Verdict`; a reset's observation also carries the system
  prompt, the tool schemas and the tools that need the user's confirmation;
- the state (:class:`TrajgymState`) is the episode id, step count, task, persona, seed and
  the digest of the environment's state.

The server is :mod:`trajgym.integrations.openenv_server` (``trajgym serve``);
:class:`TrajgymClient` is OpenEnv's ``EnvClient`` typed with these models, and
:func:`play_episode` drives any trajgym agent through it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium
from openenv.core.client_types import StepResult
from openenv.core.env_client import EnvClient
from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field, JsonValue

from trajgym.agents.base import Agent, EpisodeContext
from trajgym.envs import tool_env
from trajgym.envs.base import ToolEnv
from trajgym.envs.users.base import UserFactory
from trajgym.records.schema import Message, Split, Task, ToolCall, Verdict

RESET_OPTIONS = ("seed", "episode_id", "task_id", "persona", "split")


class TrajgymAction(Action):
    """The assistant's message: text and/or tool calls (an OpenAI chat message's fields)."""

    role: Literal["assistant"] = "assistant"
    content: str | None = Field(None, description="What the assistant says to the user.")
    tool_calls: tuple[ToolCall, ...] | None = Field(
        None, description="OpenAI-style tool calls; ``function.arguments`` is JSON text."
    )

    @classmethod
    def from_message(cls, message: Message) -> TrajgymAction:
        """The action that sends ``message`` (an assistant message)."""
        return cls(content=message.content, tool_calls=message.tool_calls)

    def to_message(self) -> Message:
        """The trajgym message this action stands for."""
        return Message(role="assistant", content=self.content, tool_calls=self.tool_calls)


class TrajgymObservation(Observation):
    """The messages an action caused, with the reward, ``done`` and, at the end, the verdict."""

    messages: tuple[Message, ...] = Field((), description="New tool results / user reply.")
    verdict: Verdict | None = Field(None, description="The verified reward, once terminated.")
    termination: str | None = Field(None, description="user_stop, transfer or truncated.")
    truncated: bool = Field(False, description="Whether the step limit ended the episode.")
    error: str | None = Field(None, description="Why the action was refused, if it was.")
    task_id: str | None = Field(None, description="At reset: the task being played.")
    persona: str | None = Field(None, description="At reset: the simulated user's persona.")
    system_prompt: str | None = Field(None, description="At reset: the agent's system prompt.")
    tools: tuple[dict[str, JsonValue], ...] = Field((), description="At reset: tool schemas.")
    confirm_tools: tuple[str, ...] = Field(
        (), description="At reset: tools that change state (the user must confirm first)."
    )


class TrajgymState(State):
    """Where a session's episode stands (OpenEnv's ``State``: ``episode_id``, ``step_count``)."""

    env_id: str = Field(description="The trajgym environment id.")
    split: str = Field(description="The split tasks are drawn from.")
    task_id: str | None = None
    persona: str | None = None
    seed: int | None = None
    done: bool = False
    reward: float | None = Field(None, description="The verified reward, once terminated.")
    digest: str | None = Field(None, description="Canonical hash of the environment's state.")


class SessionClosedError(RuntimeError):
    """A session's environment was closed (it expired, or its connection ended)."""


class TrajgymEnvironment(Environment[TrajgymAction, TrajgymObservation, TrajgymState]):
    """One session's trajgym environment behind OpenEnv's ``Environment`` interface.

    The trajgym env is made at the first reset (in the session's own thread, where OpenEnv
    runs reset and step) and remade when a reset asks for another split. ``close`` ends the
    episode (``end_episode``: a Workspace sandbox is released) and closes the env.
    """

    # Each instance owns its env and nothing is shared: OpenEnv may run one per session.
    SUPPORTS_CONCURRENT_SESSIONS = True

    def __init__(
        self,
        env_id: str,
        split: str = "train",
        user: UserFactory | str = "scripted",
        **env_kwargs: Any,
    ) -> None:
        """An environment serving ``env_id``'s ``split``; ``env_kwargs`` go to its constructor."""
        super().__init__()
        self.env_id, self.split, self.user, self.env_kwargs = env_id, split, user, env_kwargs
        spec = gymnasium.registry.get(env_id)
        self.max_steps = spec.max_episode_steps if spec else None
        self._env: ToolEnv[Any] | None = None
        self._state = TrajgymState(env_id=env_id, split=split)
        self.closed_because: str | None = None

    def reset(
        self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any
    ) -> TrajgymObservation:
        """Start an episode; ``kwargs`` may name a ``task_id``, a ``persona`` and a ``split``."""
        self._check_open()
        unknown = sorted(set(kwargs) - set(RESET_OPTIONS))
        if unknown:
            raise ValueError(
                f"Unknown reset option(s) {unknown}: pass any of {', '.join(RESET_OPTIONS)}."
            )
        env = self._env_of(kwargs.get("split") or self.split)
        env.end_episode()  # what the last episode held goes before the next one takes more
        options = {k: kwargs[k] for k in ("task_id", "persona") if kwargs.get(k)}
        obs, info = env.reset(seed=seed, options=options)
        self._state = TrajgymState(
            episode_id=episode_id or uuid.uuid4().hex,
            env_id=env.id,
            split=env.split,
            task_id=info["task_id"],
            persona=info["persona"],
            seed=seed,
        )
        return TrajgymObservation(
            messages=obs.messages,
            task_id=info["task_id"],
            persona=info["persona"],
            system_prompt=info["system_prompt"],
            tools=tuple(info["tools"]),
            confirm_tools=tuple(n for n, t in env.toolkit.tools.items() if t.writes),
        )

    def step(
        self, action: TrajgymAction, timeout_s: float | None = None, **kwargs: Any
    ) -> TrajgymObservation:
        """Apply the assistant's message (``timeout_s`` is not used: tools have their own)."""
        self._check_open()
        env, state = self._env, self._state
        if env is None:
            raise ValueError("Call reset() before step(): this session has no episode yet.")
        if state.done:
            over = Message(
                role="tool",
                tool_call_id="invalid_action",
                name="error",
                content="Error: the episode is over; call reset()",
            )
            return TrajgymObservation(messages=(over,), reward=0.0, done=True)
        obs, reward, terminated, truncated, info = env.step(action.to_message())
        state.step_count += 1
        truncated = truncated or (
            not terminated and self.max_steps is not None and state.step_count >= self.max_steps
        )
        verdict: Verdict | None = info.get("verdict")
        if terminated or truncated:
            state.done, state.reward = True, float(reward)
            # Kept before the episode's hold is released: a finished episode holds nothing.
            state.digest = verdict.final_state_hash if verdict else env.digest(env.state)
            env.end_episode()
        return TrajgymObservation(
            messages=obs.messages,
            reward=float(reward),
            done=state.done,
            verdict=verdict,
            termination=info.get("termination") or ("truncated" if truncated else None),
            truncated=truncated,
            error=info.get("error"),
        )

    @property
    def state(self) -> TrajgymState:
        """The episode's id, step count, task, persona, seed, reward and state digest."""
        state = self._state.model_copy()
        if self._env is not None and self._env.state is not None and not state.done:
            state.digest = self._env.digest(self._env.state)
        return state

    def close(self) -> None:
        """End the episode (releasing what it holds) and close the env; idempotent."""
        self.closed_because = self.closed_because or "was closed"
        env, self._env = self._env, None
        if env is not None:
            env.end_episode()
            env.close()

    def _env_of(self, split: str) -> ToolEnv[Any]:
        if self._env is not None and self._env.split != split:
            self._env.end_episode()
            self._env.close()
            self._env = None
        if self._env is None:
            self._env = tool_env(self.env_id, split=split, user=self.user, **self.env_kwargs)
        return self._env

    def _check_open(self) -> None:
        if self.closed_because is not None:
            raise SessionClosedError(
                f"This session {self.closed_because} and its environment is closed; "
                "connect again (a new client) for a new session."
            )


class TrajgymClient(EnvClient[TrajgymAction, TrajgymObservation, TrajgymState]):
    """OpenEnv's WebSocket client, typed with trajgym's action, observation and state.

    Async like every ``EnvClient`` (``.sync()`` gives the blocking wrapper)::

        async with TrajgymClient(base_url="http://127.0.0.1:8000") as env:
            result = await env.reset(task_id="test-cancel_pending_order-0", seed=0)
            result = await env.step(TrajgymAction(content="Hello!"))
    """

    def _step_payload(self, action: TrajgymAction) -> dict[str, Any]:
        return action.model_dump(mode="json", exclude_none=True)

    def _parse_result(self, payload: dict[str, Any]) -> StepResult[TrajgymObservation]:
        fields = {**payload.get("observation", {}), "reward": payload.get("reward")}
        observation = TrajgymObservation.model_validate({**fields, "done": payload.get("done")})
        return StepResult(observation, reward=observation.reward, done=observation.done)

    def _parse_state(self, payload: dict[str, Any]) -> TrajgymState:
        return TrajgymState.model_validate(payload)


@dataclass(frozen=True)
class RemoteEpisode:
    """An episode played through a client: its messages and how it ended."""

    messages: tuple[Message, ...]
    reward: float | None
    verdict: Verdict | None
    steps: int


async def play_episode(
    client: TrajgymClient,
    agent: Agent,
    task: Task,
    *,
    seed: int,
    persona: str | None = None,
    split: Split | None = None,
) -> RemoteEpisode:
    """Play ``task`` to its end with ``agent`` through a served environment.

    Only the scripted expert reads ``task``'s ground truth; any other agent is told just
    its id. ``agent.act`` runs on the event loop: wrap a slow (LLM) agent's call yourself.
    """
    options = {"task_id": task.id, "persona": persona, "split": split or task.split}
    result = await client.reset(seed=seed, **{k: v for k, v in options.items() if v})
    first = result.observation
    assert first.system_prompt is not None, "a reset's observation carries the system prompt"
    agent.reset(
        EpisodeContext(
            task=task,
            system_prompt=first.system_prompt,
            tools=first.tools,
            confirm_tools=first.confirm_tools,
            seed=seed,
        )
    )
    messages = [Message(role="system", content=first.system_prompt), *first.messages]
    steps = 0
    while not result.done:
        action = agent.act(tuple(messages))
        result = await client.step(TrajgymAction.from_message(action))
        messages += [action, *result.observation.messages]
        steps += 1
    return RemoteEpisode(tuple(messages), result.reward, result.observation.verdict, steps)
