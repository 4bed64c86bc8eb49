"""``trajgym serve``: what OpenEnv's protocol costs a step, and sessions/s at 64 clients.

The server is ``trajgym serve trajgym/RetailLite-v0`` in its own process (so it does not
share our GIL); the clients are OpenEnv's ``EnvClient`` (typed with trajgym's models) over
its WebSocket protocol. Measured in one run:

1. Per-step overhead: the scripted expert's episodes are recorded in process, then their
   actions replayed twice, step by step, with the same seeds and tasks: through
   ``env.step`` in this process, and through one client. Printed: both per-step times,
   their difference (the overhead, absolute) and their ratio; beside them the round trip of
   a ``state`` message (no executor hop, so it shows the protocol's own share).
2. Sessions per second: ``--sessions`` whole sessions (connect, reset, the expert's steps,
   close), ``--concurrency`` of them in flight, against the same episodes played one after
   another in process.

Run: python bench/serve.py [--episodes 20] [--sessions 512] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager

from trajgym.agents.expert import ScriptedExpert
from trajgym.envs import tool_env
from trajgym.integrations.openenv import TrajgymAction, TrajgymClient, play_episode
from trajgym.records.schema import Message, Task
from trajgym.rollouts.rollout import rollout

ENV = "trajgym/RetailLite-v0"
Episode = tuple[Task, int, list[Message]]  # task, seed, the expert's actions


def expert_episodes(n: int) -> list[Episode]:
    """``n`` expert episodes on spread-out test tasks, as replayable actions."""
    env = tool_env(ENV, split="test")
    tasks = env.tasks()
    episodes = []
    for i in range(n):
        task = tasks[i * len(tasks) // n]
        played = rollout(env, ScriptedExpert(), seed=i, task_id=task.id)
        assert played.success, f"the expert failed {task.id}"
        episodes.append((task, i, [m for m in played.messages if m.role == "assistant"]))
    env.close()
    return episodes


def in_process_step_s(episodes: list[Episode], repeats: int) -> float:
    """Median over ``repeats`` of the mean seconds of one ``env.step``."""
    env = tool_env(ENV, split="test")
    means = []
    for _ in range(repeats):
        spent, steps = 0.0, 0
        for task, seed, actions in episodes:
            env.reset(seed=seed, options={"task_id": task.id})
            for action in actions:
                started = time.perf_counter()
                env.step(action)
                spent += time.perf_counter() - started
            steps += len(actions)
            env.end_episode()
        means.append(spent / steps)
    env.close()
    return statistics.median(means)


async def served_step_s(url: str, episodes: list[Episode], repeats: int) -> tuple[float, float]:
    """Median of the mean seconds of one step through a client, and of a ``state`` trip."""
    step_means, state_means = [], []
    async with TrajgymClient(base_url=url) as client:
        for _ in range(repeats):
            spent, steps = 0.0, 0
            for task, seed, actions in episodes:
                await client.reset(task_id=task.id, seed=seed)
                for action in actions:
                    sent = TrajgymAction.from_message(action)
                    started = time.perf_counter()
                    result = await client.step(sent)
                    spent += time.perf_counter() - started
                assert result.done and result.reward == 1.0, "the replay diverged"
                steps += len(actions)
            step_means.append(spent / steps)
            started = time.perf_counter()
            for _ in range(steps):
                await client.state()
            state_means.append((time.perf_counter() - started) / steps)
    return statistics.median(step_means), statistics.median(state_means)


async def sessions_per_s(url: str, episodes: list[Episode], n: int, concurrency: int) -> float:
    """Whole sessions per second, ``concurrency`` clients at a time."""
    queue = [episodes[i % len(episodes)] for i in range(n)]
    rewards: list[float | None] = []

    async def worker() -> None:
        while queue:
            task, seed, _ = queue.pop()
            async with TrajgymClient(base_url=url, message_timeout_s=300) as client:
                played = await play_episode(client, ScriptedExpert(), task, seed=seed)
            rewards.append(played.reward)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    assert rewards == [1.0] * n, "a served episode failed"
    return n / elapsed


def in_process_sessions_per_s(episodes: list[Episode], n: int) -> float:
    """The same episodes one after another in process: reset, the expert's steps, end."""
    env = tool_env(ENV, split="test")
    started = time.perf_counter()
    for i in range(n):
        task, seed, _ = episodes[i % len(episodes)]
        rollout(env, ScriptedExpert(), seed=seed, task_id=task.id)
    elapsed = time.perf_counter() - started
    env.close()
    return n / elapsed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(max_sessions: int) -> Iterator[str]:
    """``trajgym serve`` in a process of its own; yields its URL once healthy."""
    port = free_port()
    command = [sys.executable, "-m", "trajgym", "serve", ENV, "--split", "test"]
    command += ["--port", str(port), "--max-sessions", str(max_sessions)]
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=1).read()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(f"trajgym serve did not start:\n{log.read()}") from None
                    time.sleep(0.2)
            yield url
        finally:
            process.terminate()
            process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=20, help="expert episodes replayed")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sessions", type=int, default=512)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    episodes = expert_episodes(args.episodes)
    steps = sum(len(a) for _, _, a in episodes)
    print(f"{ENV}: {len(episodes)} expert episodes, {steps} steps, replayed {args.repeats}x")
    local = in_process_step_s(episodes, args.repeats)
    local_sessions = in_process_sessions_per_s(episodes, args.sessions)
    with server(args.concurrency) as url:
        served, state_trip = asyncio.run(served_step_s(url, episodes, args.repeats))
        rate = asyncio.run(sessions_per_s(url, episodes, args.sessions, args.concurrency))
    print(f"in-process env.step        {local * 1e6:9.1f} us/step")
    print(f"served step (WebSocket)    {served * 1e6:9.1f} us/step")
    print(f"  overhead                 {(served - local) * 1e6:9.1f} us/step")
    print(f"  served / in-process      {served / local:9.1f}x")
    print(f"state round trip           {state_trip * 1e6:9.1f} us (no env step, no thread hop)")
    print(
        f"sessions/s at {args.concurrency} clients   {rate:9.1f} "
        f"({args.sessions} sessions: connect, reset, expert steps, close)"
    )
    print(f"sessions/s in process      {local_sessions:9.1f} (one after another, no server)")
    print(f"  served / in-process      {rate / local_sessions:9.2f}x")


if __name__ == "__main__":
    main()
