"""Run the tool calls of an assistant message and answer each with a tool message.

Whatever the model wrote (an unknown tool, malformed JSON, arguments of the wrong shape),
the answer is a tool message that says precisely what was wrong; nothing raises.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic

from pydantic import BaseModel, ValidationError

from trajgym.records.schema import Message, ToolCall
from trajgym.tools.base import State, Tool, ToolError

_MAX_ECHO = 200  # characters of bad input quoted back to the model


@dataclass(frozen=True)
class ToolOutcome:
    """The result of one tool call: the tool message and whether the call succeeded."""

    message: Message
    ok: bool
    tool: Tool[Any] | None


class Toolkit(Generic[State]):
    """A named set of tools bound to no state; the state is passed to each call."""

    def __init__(self, tools: Iterable[Tool[State]]) -> None:
        self.tools: dict[str, Tool[State]] = {}
        for t in tools:
            if t.name in self.tools:
                raise ValueError(f"Duplicate tool name '{t.name}'.")
            self.tools[t.name] = t
        self.schemas: tuple[dict[str, Any], ...] = tuple(t.schema for t in self.tools.values())

    def call(self, state: State, call: ToolCall) -> ToolOutcome:
        """Execute one tool call against ``state``; errors become tool messages."""
        name = call.function.name
        tool = self.tools.get(name)
        if tool is None:
            known = ", ".join(self.tools)
            return self._error(call, f"unknown tool '{_clip(name)}'. Available tools: {known}.")
        try:
            args = _parse_arguments(call.function.arguments)
            validated = tool.args_model.model_validate(args)
        except _ArgumentsError as e:
            return self._error(call, f"arguments for '{name}' {e}", tool)
        except ValidationError as e:
            return self._error(call, f"invalid arguments for '{name}': {_describe(e)}", tool)
        try:
            result = tool.fn(state, **dict(validated))
        except ToolError as e:
            return self._error(call, str(e), tool)
        content = _render(result)
        return ToolOutcome(
            Message(role="tool", content=content, tool_call_id=call.id, name=name), True, tool
        )

    def call_all(self, state: State, calls: Iterable[ToolCall]) -> list[ToolOutcome]:
        """Execute parallel tool calls in the order the model wrote them."""
        return [self.call(state, c) for c in calls]

    @staticmethod
    def _error(call: ToolCall, text: str, tool: Tool[Any] | None = None) -> ToolOutcome:
        msg = Message(
            role="tool",
            content=f"Error: {text}",
            tool_call_id=call.id,
            name=_clip(call.function.name),
        )
        return ToolOutcome(msg, False, tool)


class _ArgumentsError(ValueError):
    pass


def _parse_arguments(raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _ArgumentsError(f"are not valid JSON ({e.msg} at char {e.pos}): {_clip(raw)}") from e
    if not isinstance(value, dict):
        raise _ArgumentsError(f"must be a JSON object, got {type(value).__name__}: {_clip(raw)}")
    return value


def _describe(error: ValidationError) -> str:
    """Say each problem as 'field: what is wrong', in words a model can act on."""
    parts = []
    for err in error.errors(include_url=False):
        field = ".".join(str(p) for p in err["loc"]) or "arguments"
        kind = err["type"]
        if kind == "missing":
            parts.append(f"'{field}' is required but missing")
        elif kind == "extra_forbidden":
            parts.append(f"'{_clip(field)}' is not an argument of this tool")
        else:
            got = _clip(json.dumps(err.get("input"), default=str))
            parts.append(f"'{field}': {err['msg']} (got {got})")
    return "; ".join(parts)


def _render(result: Any) -> str:
    """Tool results go back as compact JSON (strings as they are)."""
    if isinstance(result, str):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump_json()
    return json.dumps(result, separators=(",", ":"), default=str)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ECHO else text[:_MAX_ECHO] + "..."
