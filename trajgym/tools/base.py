"""Typed Python functions as tools: schema from the signature, validation from the same model.

A tool's first parameter receives the episode's state (a typed database or workspace) and
is not part of the schema; every other parameter becomes a JSON-schema property whose
description comes from the Google docstring's ``Args:`` section.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, get_type_hints

import docstring_parser
from pydantic import BaseModel, ConfigDict, Field, create_model

State = TypeVar("State")


class ToolError(Exception):
    """Raised inside a tool when a request cannot be carried out; the agent sees the message."""


@dataclass(frozen=True)
class Tool(Generic[State]):
    """A callable tool with its validated argument model and OpenAI function schema."""

    name: str
    description: str
    fn: Callable[..., Any]
    args_model: type[BaseModel]
    writes: bool
    ends_episode: bool

    @property
    def parameters(self) -> dict[str, Any]:
        """The JSON schema of the arguments (from ``args_model``)."""
        return _compact_schema(self.args_model.model_json_schema())

    @property
    def schema(self) -> dict[str, Any]:
        """The OpenAI ``{"type": "function", "function": {...}}`` schema."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def __call__(self, state: State, **kwargs: Any) -> Any:
        """Run the tool directly (arguments are validated)."""
        args = self.args_model.model_validate(kwargs)
        return self.fn(state, **dict(args))


def tool(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    writes: bool = False,
    ends_episode: bool = False,
) -> Any:
    """Turn a typed function with a Google docstring into a :class:`Tool`.

    Args:
        fn: The function; its first parameter receives the episode state.
        name: Tool name shown to the model (defaults to the function name).
        writes: Whether the tool changes the state (the policy asks for confirmation first).
        ends_episode: Whether a successful call ends the episode (e.g. a transfer to a human).
    """

    def wrap(f: Callable[..., Any]) -> Tool[Any]:
        return _build_tool(f, name or f.__name__, writes, ends_episode)

    return wrap(fn) if fn is not None else wrap


def _build_tool(fn: Callable[..., Any], name: str, writes: bool, ends: bool) -> Tool[Any]:
    doc = docstring_parser.parse(inspect.getdoc(fn) or "")
    if not doc.short_description:
        raise TypeError(f"Tool '{name}' needs a docstring: it becomes the tool's description.")
    arg_docs = {p.arg_name: p.description or "" for p in doc.params}
    hints = get_type_hints(fn)
    params = list(inspect.signature(fn).parameters.values())[1:]  # the first is the state
    fields: dict[str, Any] = {}
    for param in params:
        if param.name not in hints:
            raise TypeError(f"Tool '{name}': parameter '{param.name}' has no type annotation.")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[param.name] = (
            hints[param.name],
            Field(default, description=arg_docs.get(param.name)),
        )
    config = ConfigDict(extra="forbid", title=name)
    args_model = create_model(f"{name}_arguments", __config__=config, **fields)
    description = doc.short_description
    if doc.long_description:
        description = f"{description}\n\n{doc.long_description}"
    return Tool(name, description, fn, args_model, writes, ends)


def _compact_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """Drop pydantic's ``title`` keys: they repeat names and cost prompt tokens."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {
                k: strip(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))
            }
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(schema)
