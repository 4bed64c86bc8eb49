"""MCP both ways: `trajgym mcp` serving episodes (stdio, streamable HTTP), McpToolkit over a
test server, and an MCP domain whose reward is the LLM judge's verdict."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import pytest
import uvicorn
from mcp import Client, ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from typer.testing import CliRunner

from trajgym.agents.base import EpisodeContext
from trajgym.cli import app
from trajgym.envs import tool_env
from trajgym.errors import TrajgymError, UnknownEnvironmentError
from trajgym.integrations import mcp_server
from trajgym.integrations.mcp_domain import McpDomainEnv
from trajgym.integrations.mcp_server import EpisodeSettings, http_app
from trajgym.integrations.mcp_toolkit import McpToolkit
from trajgym.llm.client import LLMConfig
from trajgym.records.schema import FunctionCall, Message, Provenance, ToolCall
from trajgym.rollouts.rollout import rollout
from trajgym.testing.fake_openai import FakeOpenAIServer, FaultPlan

ENV = "trajgym/RetailLite-v0"
ROOT = Path(__file__).resolve().parent.parent
NOTES_SERVER = f"{sys.executable} {ROOT / 'tests' / 'mcp_test_server.py'}"
EXTRAS = ["message_user", "episode_info", "finish_episode"]
CRITERIA = ["goal", "policy", "truthful", "economical"]


def trajgym_schemas() -> dict[str, dict]:
    env = tool_env(ENV)
    try:
        return {s["function"]["name"]: s["function"]["parameters"] for s in env.toolkit.schemas}
    finally:
        env.close()


async def info(session: ClientSession) -> dict:
    result = await session.call_tool("episode_info", {})
    return json.loads(result.content[0].text)


# `trajgym mcp` over stdio ------------------------------------------------------------------------


def test_a_stdio_client_lists_and_calls_an_episodes_tools() -> None:
    expected = trajgym_schemas()
    command = ["-m", "trajgym", "mcp", ENV, "--transport", "stdio", "--seed", "3"]
    params = StdioServerParameters(command=sys.executable, args=command, cwd=str(ROOT))

    async def play() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            listed = (await session.list_tools()).tools
            assert [t.name for t in listed] == [*expected, *EXTRAS]
            assert {t.name: t.input_schema for t in listed[: len(expected)]} == expected
            start = await info(session)
            assert start["env_id"] == ENV and start["user_opening"] and "policy" in start
            assert "goal" not in json.dumps(start)  # the hidden goal stays hidden

            bad = await session.call_tool("find_user_id_by_email", {"email": 5})
            assert bad.is_error and bad.content[0].text.startswith("Error: invalid arguments")
            unknown = await session.call_tool("get_order_details", {"order_id": "#W0"})
            assert unknown.is_error and unknown.content[0].text.startswith("Error:")
            reply = await session.call_tool("message_user", {"message": "What is your email?"})
            assert not reply.is_error and "@" in reply.content[0].text

            resource = json.loads(
                (await session.read_resource("trajgym://episode")).contents[0].text
            )
            assert resource["turns"] == start["turns"] + 6  # three turns, each answered
            done = json.loads((await session.call_tool("finish_episode", {})).content[0].text)
            assert done["reward"] == 0.0 and done["verdict"]["state_match"] is False
            late = await session.call_tool("message_user", {"message": "Anything else?"})
            assert late.is_error and "the episode is over" in late.content[0].text

    anyio.run(play)


def test_a_stdio_session_that_ends_releases_its_episode(tmp_path: Path) -> None:
    marker = tmp_path / "closed"
    noted = (  # `trajgym mcp`, with Episode.close noting its call in a file
        "import sys\n"
        "from trajgym.integrations import mcp_server\n"
        "close = mcp_server.Episode.close\n"
        "def noted(self):\n"
        "    close(self)\n"
        f"    open({str(marker)!r}, 'a').write(str(len(self.env.transcript)))\n"
        "mcp_server.Episode.close = noted\n"
        "from trajgym.cli import main\n"
        f"sys.argv = ['trajgym', 'mcp', {ENV!r}]\n"
        "main()\n"
    )
    params = StdioServerParameters(command=sys.executable, args=["-c", noted], cwd=str(ROOT))

    async def play() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await session.call_tool("message_user", {"message": "What is your email?"})

    anyio.run(play)
    assert marker.read_text() == "4"  # system, opening, the message and the reply


# `trajgym mcp` over streamable HTTP ----------------------------------------------------------------


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(http_app(EpisodeSettings(env_id=ENV, seed=3)), port=0, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/mcp"
    server.should_exit = True
    thread.join(timeout=10)


def test_http_sessions_each_play_their_own_episode(http_url: str, monkeypatch) -> None:
    closed: list[int] = []
    close = mcp_server.Episode.close

    def counted(self: mcp_server.Episode) -> None:
        closed.append(id(self))
        close(self)

    monkeypatch.setattr(mcp_server.Episode, "close", counted)

    async def play() -> None:
        async with (
            streamable_http_client(http_url) as (read_a, write_a),
            ClientSession(read_a, write_a) as a,
            streamable_http_client(http_url) as (read_b, write_b),
            ClientSession(read_b, write_b) as b,
        ):
            await a.initialize()
            await b.initialize()
            assert [t.name for t in (await a.list_tools()).tools][-3:] == EXTRAS
            start_a, start_b = await info(a), await info(b)
            await a.call_tool("message_user", {"message": "What is your email?"})
            bad = await a.call_tool("cancel_pending_order", {"order_id": "#W0"})
            assert bad.is_error and "'reason' is required" in bad.content[0].text
            assert (await info(a))["turns"] == start_a["turns"] + 4
            assert (await info(b))["turns"] == start_b["turns"]  # b's episode is untouched
            await b.call_tool("finish_episode", {})
            assert (await info(b))["done"] and not (await info(a))["done"]
        # The SDK's high-level client (auto mode) is sent to the handshake, so it has a session.
        async with Client(http_url) as c:
            await c.call_tool("message_user", {"message": "What is your email?"})
            assert json.loads((await c.call_tool("episode_info", {})).content[0].text)["turns"] == 4
        for _ in range(100):  # each session's end (DELETE) closes its episode
            if len(closed) == 3:
                break
            await anyio.sleep(0.05)
        assert len(set(closed)) == 3

    anyio.run(play)


def test_mcp_toolkit_calls_a_trajgym_episode_over_http(http_url: str) -> None:
    expected = trajgym_schemas()
    with McpToolkit(http_url) as toolkit:
        assert [s["function"]["parameters"] for s in toolkit.schemas[:5]] == list(expected.values())
        assert toolkit.tools["get_order_details"].writes is False
        assert toolkit.tools["cancel_pending_order"].writes is True
        call = ToolCall(id="c1", function=FunctionCall(name="find_user_id_by_email", arguments="{"))
        assert toolkit.call(None, call).message.text.startswith("Error: arguments for")
        wrong = call.model_copy(update={"function": FunctionCall(name="find_user_id_by_email")})
        outcome = toolkit.call(None, wrong)
        assert not outcome.ok and outcome.message.text.startswith("Error: invalid arguments")
        said = toolkit.tools["message_user"](None, message="What is your email?")
        assert "@" in said


# The CLI's errors -------------------------------------------------------------------------------


def test_the_mcp_verb_explains_what_to_fix(monkeypatch) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["mcp", "trajgym/RetailLight-v0"])
    assert isinstance(unknown.exception, UnknownEnvironmentError)
    assert "Did you mean 'trajgym/RetailLite-v0'" in str(unknown.exception)
    transport = runner.invoke(app, ["mcp", ENV, "--transport", "sse"])
    assert transport.exit_code == 2 and "'sse' is not one of 'stdio', 'http'" in transport.output
    monkeypatch.setitem(sys.modules, "mcp", None)  # the extra is not installed
    monkeypatch.delitem(sys.modules, "trajgym.integrations.mcp_server")
    missing = runner.invoke(app, ["mcp", ENV])
    assert isinstance(missing.exception, TrajgymError)
    assert "pip install 'trajgym[mcp]'" in str(missing.exception)


# An MCP server as a domain, the LLM judge as its reward ---------------------------------------------


class Scripted:
    """Plays a fixed list of assistant messages."""

    def __init__(self, script: Sequence[Message]) -> None:
        self.script = script
        self.turn = 0

    @property
    def provenance(self) -> Provenance:
        return Provenance(kind="baseline", agent="Scripted")

    def reset(self, context: EpisodeContext) -> None:
        self.turn = 0

    def act(self, messages: Sequence[Message]) -> Message:
        self.turn += 1
        return self.script[min(self.turn, len(self.script)) - 1]


def calls(*calls: tuple[str, dict]) -> Message:
    return Message(
        role="assistant",
        tool_calls=tuple(
            ToolCall(id=f"c{i}", function=FunctionCall(name=n, arguments=json.dumps(a)))
            for i, (n, a) in enumerate(calls)
        ),
    )


SCRIPT = [
    calls(("add_note", {"title": "milk", "body": "buy milk"})),
    calls(("read_note", {"title": "eggs"}), ("read_note", {"title": "milk"})),
    Message(role="assistant", content="Saved your note 'milk'. Anything else?"),
]
TASK = {
    "id": "notes-1",
    "split": "train",
    "family": "add_note",
    "goal": {
        "identity": {},
        "intents": [{"kind": "add_note", "request": "save a note 'milk' saying 'buy milk'"}],
        "instruction": "You want a note titled 'milk' that says 'buy milk'.",
    },
}


def verdict(passed: bool) -> str:
    findings = [{"criterion": c, "passed": passed, "note": "n"} for c in CRITERIA]
    return json.dumps({"passed": passed, "score": float(passed), "findings": findings})


def test_an_mcp_domain_is_played_and_judged(tmp_path: Path) -> None:
    tasks = tmp_path / "notes.jsonl"
    tasks.write_text(json.dumps(TASK) + "\n")
    grades = iter([True, False])
    with FakeOpenAIServer(
        lambda body: {"role": "assistant", "content": verdict(next(grades))}
    ) as fake:
        judge = LLMConfig(model="openai/fake", api_base=fake.base_url, max_attempts=1)
        env = McpDomainEnv(NOTES_SERVER, tasks, judge)
        try:
            assert env.id == "trajgym/Mcp.notes-v0" and env.tasks()[0].id == "notes-1"
            assert env.toolkit.schemas[0]["function"]["parameters"]["title"] == "add_noteArguments"
            passed = rollout(env, Scripted(SCRIPT), seed=0)
            prompt = fake.requests[0]["messages"][1]["content"]
            failed = rollout(env, Scripted(SCRIPT), seed=1)  # a fresh session: no note yet
            fake.faults = FaultPlan(rate=1.0, kinds=("server_error",))
            broken = rollout(env, Scripted(SCRIPT), seed=2)
        finally:
            env.close()
    assert passed.status == "ok" and passed.reward == 1.0 and passed.termination == "user_stop"
    assert passed.verdict is not None and passed.verdict.checks == dict.fromkeys(CRITERIA, True)
    results = [m.text for m in passed.messages if m.role == "tool"]
    assert results[0] == "Saved note 'milk'."
    assert results[1].startswith("Error: ") and "no note titled 'eggs'" in results[1]
    assert results[2] == "buy milk"
    assert "You want a note titled 'milk'" in prompt and "ASSISTANT CALLS add_note(" in prompt
    assert failed.status == "ok" and failed.reward == 0.0  # the judge's fail is the reward
    assert broken.status == "error" and broken.reward is None  # a judge error is not a 0
    assert broken.error and "judge could not grade" in broken.error
    assert not env.mcp.connected
