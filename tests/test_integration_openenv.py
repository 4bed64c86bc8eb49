"""``trajgym serve``: trajgym environments played through OpenEnv's own clients.

Each server is a real uvicorn on 127.0.0.1 (a free port) in a thread of this process; the
clients are OpenEnv's: its ``GenericEnvClient`` (with its sync wrapper) and its
``EnvClient`` typed with trajgym's models, over OpenEnv's WebSocket protocol.
"""

from __future__ import annotations

import asyncio
import builtins
import gc
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple

import httpx
import pytest
import uvicorn
from openenv.core.generic_client import GenericEnvClient
from typer.testing import CliRunner

from trajgym.agents.base import EpisodeContext
from trajgym.agents.expert import ScriptedExpert
from trajgym.cli import app as cli_app
from trajgym.envs import tasks_of, tool_env
from trajgym.errors import TrajgymError, UnknownEnvironmentError
from trajgym.integrations.openenv import (
    RemoteEpisode,
    TrajgymAction,
    TrajgymClient,
    TrajgymState,
    play_episode,
)
from trajgym.integrations.openenv_server import TrajgymEnvServer, make_app, running
from trajgym.records.schema import Message, Verdict
from trajgym.rollouts.rollout import rollout
from trajgym.tools.sandbox import isolation, orphans

LITE = "trajgym/RetailLite-v0"
TASKS = tasks_of(LITE, "test")
SESSIONS = 64


class Served(NamedTuple):
    url: str
    server: TrajgymEnvServer


@contextmanager
def serving(env_id: str = LITE, **settings: Any) -> Iterator[Served]:
    app = make_app(env_id, **{"split": "test", **settings})
    with running(app) as url:
        yield Served(url, app.state.server)


@pytest.fixture(scope="module")
def lite() -> Iterator[Served]:
    with serving(max_sessions=SESSIONS + 2, idle_timeout_s=120) as served:
        yield served


def wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_openenv_generic_client_plays_a_retail_lite_episode_with_the_expert(lite: Served) -> None:
    task, seed, expert = TASKS[5], 5, ScriptedExpert()
    with GenericEnvClient(base_url=lite.url).sync() as env:
        result = env.reset(task_id=task.id, seed=seed)
        first = result.observation
        assert first["task_id"] == task.id and not result.done
        context = EpisodeContext(
            task=task,
            system_prompt=first["system_prompt"],
            tools=tuple(first["tools"]),
            confirm_tools=tuple(first["confirm_tools"]),
            seed=seed,
        )
        expert.reset(context)
        messages = [Message(role="system", content=first["system_prompt"])]
        messages += [Message.model_validate(m) for m in first["messages"]]
        while not result.done:
            action = expert.act(tuple(messages))
            result = env.step(action.to_openai())  # a plain OpenAI message is an action
            messages += [action, *map(Message.model_validate, result.observation["messages"])]
        state = env.state()
    verdict = Verdict.model_validate(result.observation["verdict"])
    assert result.reward == 1.0 and verdict.reward == 1.0 and verdict.state_match
    assert state["task_id"] == task.id and state["done"] and state["reward"] == 1.0
    assert state["step_count"] == sum(m.role == "assistant" for m in messages) > 1
    assert state["digest"] == verdict.final_state_hash


def test_64_concurrent_sessions_each_play_their_own_task(lite: Served) -> None:
    picked = [TASKS[i * len(TASKS) // SESSIONS] for i in range(SESSIONS)]
    local = tool_env(LITE, split="test")
    want = [rollout(local, ScriptedExpert(), seed=i, task_id=t.id) for i, t in enumerate(picked)]
    local.close()
    wait_for(lambda: lite.server.active_sessions == 0)  # the sessions of earlier tests
    peak: list[int] = []

    async def one(i: int, all_open: asyncio.Barrier) -> tuple[RemoteEpisode, TrajgymState]:
        async with TrajgymClient(base_url=lite.url, message_timeout_s=120) as client:
            await client.reset(task_id=picked[-1 - i].id, seed=99)  # someone else's, first
            await all_open.wait()  # every session is open before any plays
            peak.append(lite.server.active_sessions)
            episode = await play_episode(client, ScriptedExpert(), picked[i], seed=i)
            return episode, await client.state()

    async def everyone() -> list[tuple[RemoteEpisode, TrajgymState]]:
        all_open = asyncio.Barrier(SESSIONS)
        return await asyncio.gather(*(one(i, all_open) for i in range(SESSIONS)))

    played = asyncio.run(everyone())
    assert max(peak) == SESSIONS
    for i, ((episode, state), task, local_run) in enumerate(zip(played, picked, want, strict=True)):
        # The very episode an in-process env plays: no session saw another's state.
        assert episode.messages == local_run.messages
        assert episode.reward == 1.0 and episode.verdict == local_run.verdict
        assert (state.task_id, state.persona, state.seed) == (task.id, local_run.persona, i)
        assert state.step_count == episode.steps and state.done
        assert state.digest == local_run.verdict.final_state_hash
    assert len({s.episode_id for _, s in played}) == SESSIONS
    assert len({s.digest for _, s in played}) > SESSIONS // 2  # different tasks end apart
    wait_for(lambda: lite.server.active_sessions == 0)


def test_reset_options_and_their_errors(lite: Served) -> None:
    async def go() -> None:
        async with TrajgymClient(base_url=lite.url) as client:
            result = await client.reset(split="train", seed=1, episode_id="mine")
            state = await client.state()
            assert state.split == "train" and state.task_id.startswith("train-")
            assert state.episode_id == "mine" and result.observation.system_prompt
            with pytest.raises(RuntimeError, match="No task 'nope'.*trajgym tasks"):
                await client.reset(task_id="nope")
            with pytest.raises(RuntimeError, match=r"Unknown reset option\(s\) \['taskid'\]"):
                await client.reset(taskid=TASKS[0].id)
            fresh = TrajgymClient(base_url=lite.url)
            with pytest.raises(RuntimeError, match="Call reset"):
                await fresh.step(TrajgymAction(content="hi"))
            await fresh.close()

    asyncio.run(go())


def test_http_routes_are_openenvs(lite: Served) -> None:
    assert httpx.get(f"{lite.url}/health").json()["status"] == "healthy"
    schema = httpx.get(f"{lite.url}/schema").json()
    assert {"content", "tool_calls"} <= set(schema["action"]["properties"])
    assert {"messages", "verdict", "reward", "done"} <= set(schema["observation"]["properties"])
    # OpenEnv's HTTP /reset is stateless (a fresh env per request): it still shows the opening.
    opening = httpx.post(f"{lite.url}/reset", json={"seed": 3, "task_id": TASKS[0].id}).json()
    assert opening["observation"]["task_id"] == TASKS[0].id and opening["done"] is False


def test_a_full_server_refuses_a_session_with_a_clear_error() -> None:
    async def go(url: str) -> None:
        first, second = TrajgymClient(base_url=url), TrajgymClient(base_url=url)
        await first.reset(seed=0)
        await second.reset(seed=1)
        third = TrajgymClient(base_url=url)
        await third.connect()
        await asyncio.sleep(0.2)  # refused at once: the error must still reach its reset
        with pytest.raises(RuntimeError, match=r"at capacity: 2/2.*--max-sessions.*CAPACITY"):
            await third.reset(seed=2)
        await third.close()
        await first.close()
        for _ in range(100):  # the slot frees once the server has closed the session
            fourth = TrajgymClient(base_url=url)
            try:
                await fourth.reset(seed=3)
                break
            except RuntimeError:
                await asyncio.sleep(0.02)
            finally:
                await fourth.close()
        else:
            raise AssertionError("a closed session's slot was never freed")
        await second.close()

    with serving(max_sessions=2) as served:
        asyncio.run(go(served.url))


def test_an_idle_session_expires_and_says_so() -> None:
    async def go(served: Served) -> None:
        idle, busy = TrajgymClient(base_url=served.url), TrajgymClient(base_url=served.url)
        await idle.reset(seed=0)
        await busy.reset(seed=1)
        deadline = time.monotonic() + 10
        while served.server.active_sessions > 1:  # the busy one keeps stepping meanwhile
            assert time.monotonic() < deadline, "the idle session never expired"
            await busy.step(TrajgymAction(content="Could you say that again?"))
            await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError, match="expired after 1 s without a reset or step"):
            await idle.step(TrajgymAction(content="hello?"))
        await busy.step(TrajgymAction(content="Still there?"))
        await idle.close()
        await busy.close()

    with serving(max_sessions=4, idle_timeout_s=1.0) as served:  # margin for a busy CI
        asyncio.run(go(served))


def _sandboxes_left() -> orphans.Leftovers:
    gc.collect()
    return orphans.left_by(orphans.owner_tag())


@pytest.mark.skipif(not all(isolation().values()), reason=f"no full isolation: {isolation()}")
@pytest.mark.parametrize("how", ["close", "drop", "expire", "shutdown"])
def test_a_workspace_sandbox_is_released_with_its_session(how: str) -> None:
    async def go(served: Served, stop_server: Callable[[], None]) -> None:
        client = TrajgymClient(base_url=served.url)
        await client.reset(seed=0)
        assert not _sandboxes_left().empty  # the episode's sandbox: a mount and an executor
        if how == "close":
            await client.close()  # OpenEnv's client says close, then hangs up
        elif how == "drop":
            assert client._ws is not None
            await client._ws.close()  # the connection just ends
        elif how == "shutdown":
            await asyncio.to_thread(stop_server)  # the server stops under an open session
        wait_for(lambda: served.server.active_sessions == 0)
        wait_for(lambda: _sandboxes_left().empty)
        if how == "expire":
            with pytest.raises(RuntimeError, match="expired"):
                await client.step(TrajgymAction(content="hello?"))
            await client.close()

    assert _sandboxes_left().empty
    timeout = 0.5 if how == "expire" else 60
    with ExitStack() as stack:
        served = stack.enter_context(
            serving("trajgym/Workspace-v0", max_sessions=2, idle_timeout_s=timeout)
        )
        asyncio.run(go(served, stack.close))
    assert _sandboxes_left().empty


runner = CliRunner()


def test_serve_verb_help_and_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    shown = runner.invoke(cli_app, ["serve", "--help"])
    assert shown.exit_code == 0
    assert all(o in shown.output for o in ("--port", "--max-sessions", "--idle-timeout"))
    wrong = runner.invoke(cli_app, ["serve", "RetailLite-v0", "--port", "1"])
    assert isinstance(wrong.exception, UnknownEnvironmentError)
    assert "Did you mean 'trajgym/RetailLite-v0'" in str(wrong.exception)
    # As if the extra were not installed: importing openenv fails, and so do our modules.
    for name in [m for m in sys.modules if m.startswith("trajgym.integrations.openenv")]:
        monkeypatch.delitem(sys.modules, name)
    real_import = builtins.__import__

    def no_openenv(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.split(".")[0] == "openenv":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openenv)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("it must not serve"))
    missing = runner.invoke(cli_app, ["serve", LITE, "--port", "1"])
    assert isinstance(missing.exception, TrajgymError)
    assert "pip install 'trajgym[openenv]'" in str(missing.exception)
