"""Sandbox tools through a toolkit: results and refusals come back as tool messages."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from trajgym.records.schema import FunctionCall, ToolCall
from trajgym.tools.sandbox import ProcessSandbox, SandboxLimits, isolation
from trajgym.tools.sandbox.tools import SANDBOX_TOOLKIT

pytestmark = pytest.mark.skipif(not all(isolation().values()), reason=str(isolation()))


@dataclass
class State:
    sandbox: ProcessSandbox


def call(state: State, name: str, **arguments: object) -> tuple[bool, str]:
    outcome = SANDBOX_TOOLKIT.call(
        state, ToolCall(id="c", function=FunctionCall(name=name, arguments=json.dumps(arguments)))
    )
    return outcome.ok, outcome.message.text


def test_files_and_commands_round_trip() -> None:
    with ProcessSandbox(SandboxLimits(wall_s=5)) as box:
        state = State(box)
        assert call(state, "write_file", path="data/a.csv", content="x\n1\n2\n")[0]
        ok, text = call(
            state,
            "run_python",
            code="print(sum(int(l) for l in open('data/a.csv').readlines()[1:]))",
        )
        assert ok and json.loads(text) == {"exit_code": 0, "stdout": "3\n", "stderr": ""}
        assert json.loads(call(state, "list_files")[1]) == ["data/a.csv"]
        assert call(state, "read_file", path="data/a.csv") == (True, "x\n1\n2\n")


def test_hostile_calls_come_back_as_errors_or_results_and_the_episode_goes_on() -> None:
    with ProcessSandbox(SandboxLimits(wall_s=5)) as box:
        state = State(box)
        assert call(state, "read_file", path="../../etc/passwd") == (
            False,
            "Error: '../../etc/passwd' is outside the workspace.",
        )
        assert call(state, "read_file", path="nope.txt") == (
            False,
            "Error: No file 'nope.txt' in the workspace.",
        )
        ok, text = call(state, "run_shell", command="sleep 20", timeout_s=1)
        assert ok and json.loads(text)["note"].startswith("killed")
        ok, text = call(state, "run_shell", command="cat /etc/shadow")
        assert ok and json.loads(text)["exit_code"] != 0
        ok, text = call(state, "run_shell", command="kill -9 -1")
        assert ok and json.loads(text)["exit_code"] != 0
        assert json.loads(call(state, "run_shell", command="echo still here")[1])["stdout"] == (
            "still here\n"
        )
