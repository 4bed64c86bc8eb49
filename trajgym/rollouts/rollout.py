"""Run any agent in any trajgym environment and record the episode as a :class:`Trajectory`."""

from __future__ import annotations

import time
from typing import Any

import gymnasium

from trajgym.agents.base import Agent, EpisodeContext
from trajgym.envs.base import ToolEnv
from trajgym.errors import InfrastructureError
from trajgym.records.schema import (
    Message,
    StepTiming,
    Termination,
    Trajectory,
    Usage,
    Verdict,
)


def rollout(
    env: gymnasium.Env[Any, Any],
    agent: Agent,
    *,
    seed: int,
    task_id: str | None = None,
    persona: str | None = None,
    sample_index: int = 0,
) -> Trajectory:
    """Play one episode to its end (user stop, transfer, truncation or a failure).

    A failure of the agent (a provider error that survived retries, say) or of the
    simulated user is recorded as ``status="error"`` with its reason, never as a 0 reward.
    """
    base = env.unwrapped
    if not isinstance(base, ToolEnv):
        raise TypeError(f"{base!r} is not a trajgym environment.")
    options = {k: v for k, v in {"task_id": task_id, "persona": persona}.items() if v}
    try:
        obs, info = env.reset(seed=seed, options=options)
    except InfrastructureError as e:
        task = base.task_by_id(task_id) if task_id else None
        return _failed_start(base, agent, seed, sample_index, task_id, task, f"user: {e}")
    messages: list[Message] = [Message(role="system", content=info["system_prompt"]), *obs.messages]
    agent.reset(_episode_context(base, info, seed))
    timings: list[StepTiming] = []
    termination: Termination = "truncated"
    verdict: Verdict | None = None
    error: str | None = None
    while True:
        started = time.perf_counter()
        try:
            action = _assistant_turn(agent, messages)
        except Exception as e:  # the agent's own failure, recorded rather than raised
            error, termination = f"agent: {type(e).__name__}: {e}", "error"
            break
        acted = time.perf_counter()
        try:
            obs, _, terminated, truncated, step_info = env.step(action)
        except InfrastructureError as e:
            messages.append(action)
            error, termination = f"user: {e}", "error"
            break
        timings.append(StepTiming(agent_s=acted - started, env_s=time.perf_counter() - acted))
        messages += [action, *obs.messages]
        if terminated:
            termination, verdict = step_info["termination"], step_info["verdict"]
            break
        if truncated:
            break
    base.end_episode()
    task = info["task"]
    return Trajectory(
        env_id=base.id,
        env_version=base.version,
        task_id=task.id,
        split=base.split,
        family=task.family,
        seed=seed,
        persona=info["persona"],
        sample_index=sample_index,
        messages=tuple(messages),
        tools=tuple(info["tools"]),
        reward=None if error else (verdict.reward if verdict else 0.0),
        verdict=verdict,
        status="error" if error else "ok",
        error=error,
        termination=termination,
        provenance=agent.provenance,
        timings=tuple(timings),
        usage=getattr(agent, "usage", Usage()),
        user_usage=getattr(base.user, "usage", Usage()),
    )


def _episode_context(base: ToolEnv[Any], info: dict[str, Any], seed: int) -> EpisodeContext:
    """What the agent is told at reset: the task, the prompt, the tools, which need consent."""
    return EpisodeContext(
        task=info["task"],
        system_prompt=info["system_prompt"],
        tools=tuple(info["tools"]),
        confirm_tools=tuple(n for n, t in base.toolkit.tools.items() if t.writes),
        seed=seed,
    )


def _assistant_turn(agent: Agent, messages: list[Message]) -> Message:
    """The agent's next message; anything but an assistant message is the agent's failure."""
    action = agent.act(tuple(messages))
    if not isinstance(action, Message) or action.role != "assistant":
        raise TypeError(f"agent returned {type(action).__name__}, not an assistant Message")
    return action


def _failed_start(
    base: ToolEnv[Any],
    agent: Agent,
    seed: int,
    sample_index: int,
    task_id: str | None,
    task: Any,
    error: str,
) -> Trajectory:
    """An episode whose simulated user could not even open the conversation."""
    return Trajectory(
        env_id=base.id,
        env_version=base.version,
        task_id=task_id or "",
        split=base.split,
        family=task.family if task else "",
        seed=seed,
        persona="",
        sample_index=sample_index,
        messages=(),
        status="error",
        error=error,
        termination="error",
        provenance=agent.provenance,
        user_usage=getattr(base.user, "usage", Usage()),
    )
