"""The tool abstraction: schemas from signatures, and every kind of bad call answered."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

import pytest

from trajgym.envs.retail.tools import RETAIL_TOOLKIT
from trajgym.records.schema import FunctionCall, ToolCall
from trajgym.tools import ToolError, Toolkit, tool

SNAPSHOT = Path(__file__).parent / "snapshots" / "retail_tools.json"


class Counter:
    def __init__(self) -> None:
        self.value = 0
        self.log: list[str] = []


@tool(writes=True)
def add(state: Counter, amount: int, label: str = "") -> int:
    """Add to the counter.

    Args:
        amount: How much to add.
        label: A note kept in the log.
    """
    if amount < 0:
        raise ToolError("amount must not be negative")
    state.value += amount
    state.log.append(label)
    return state.value


@tool
def mode(state: Counter, kind: Literal["fast", "slow"]) -> str:
    """Pick a mode.

    Args:
        kind: Speed of the thing.
    """
    return kind


def call(name: str, arguments: str, id: str = "c1") -> ToolCall:
    return ToolCall(id=id, function=FunctionCall(name=name, arguments=arguments))


def test_schema_is_derived_from_signature_and_docstring() -> None:
    schema = add.schema["function"]
    assert schema["name"] == "add"
    assert schema["description"] == "Add to the counter."
    params = schema["parameters"]
    assert params["properties"]["amount"] == {"type": "integer", "description": "How much to add."}
    assert params["properties"]["label"]["default"] == ""
    assert params["required"] == ["amount"]
    assert params["additionalProperties"] is False
    assert mode.schema["function"]["parameters"]["properties"]["kind"]["enum"] == ["fast", "slow"]
    assert "title" not in json.dumps(add.schema)


def test_tool_without_docstring_is_refused() -> None:
    with pytest.raises(TypeError, match="docstring"):

        @tool
        def bare(state: Counter, x: int) -> int:
            return x


def test_valid_call_runs_and_returns_json() -> None:
    state = Counter()
    out = Toolkit([add]).call(state, call("add", '{"amount": 3, "label": "a"}'))
    assert out.ok and out.message.content == "3" and out.message.tool_call_id == "c1"
    assert state.value == 3


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("nope", "{}", "unknown tool 'nope'. Available tools: add, mode"),
        ("add", '{"amount": 3', "are not valid JSON"),
        ("add", "[1, 2]", "must be a JSON object, got list"),
        ("add", "{}", "'amount' is required but missing"),
        ("add", "  ", "'amount' is required but missing"),  # blank = no arguments
        ("add", '{"amount": 1, "colour": "red"}', "'colour' is not an argument of this tool"),
        ("add", '{"amount": "many"}', "'amount': Input should be a valid integer"),
        ("add", '{"amount": -1}', "amount must not be negative"),
        ("mode", '{"kind": "medium"}', "'kind': Input should be 'fast' or 'slow'"),
    ],
)
def test_bad_calls_come_back_as_precise_tool_errors(
    name: str, arguments: str, expected: str
) -> None:
    state = Counter()
    out = Toolkit([add, mode]).call(state, call(name, arguments))
    assert not out.ok
    assert out.message.role == "tool" and out.message.tool_call_id == "c1"
    assert out.message.content.startswith("Error: ")
    assert expected in out.message.content
    assert state.value == 0


def test_parallel_calls_all_run_in_order() -> None:
    state = Counter()
    calls = [
        call("add", json.dumps({"amount": i, "label": str(i)}), id=f"c{i}") for i in range(1, 4)
    ]
    calls.insert(1, call("add", "oops", id="bad"))
    outcomes = Toolkit([add]).call_all(state, calls)
    assert [o.message.tool_call_id for o in outcomes] == ["c1", "bad", "c2", "c3"]
    assert [o.ok for o in outcomes] == [True, False, True, True]
    assert state.log == ["1", "2", "3"]


def test_duplicate_tool_names_are_refused() -> None:
    with pytest.raises(ValueError, match="Duplicate"):
        Toolkit([add, add])


def test_retail_tool_schemas_match_snapshot() -> None:
    current = json.dumps(RETAIL_TOOLKIT.schemas, indent=1, sort_keys=True)
    if os.environ.get("TRAJGYM_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(current + "\n")
    assert current + "\n" == SNAPSHOT.read_text(), (
        "Retail tool schemas changed: bump the env version, then refresh the snapshot with "
        "TRAJGYM_UPDATE_SNAPSHOTS=1 pytest tests/test_tools.py"
    )
    assert 12 <= len(RETAIL_TOOLKIT.schemas) <= 15
