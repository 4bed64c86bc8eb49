"""Command-line options derived from a stage's config, so that each field is described once.

:func:`config_options` adds one ``--field-name`` option per flat field of a pydantic config
(numbers, strings, paths, booleans, literals, lists of those), with the field's own
description as its help. The verb receives the values given as ``flags`` (field -> value),
which :func:`trajgym.config.load_config` applies over the YAML file and under ``--set``.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import typer
from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., Any])
_PREFIX = "field__"

Overrides = Annotated[
    list[str] | None, typer.Option("--set", help="Override any config key: a.b=value.")
]


def config_options(
    model: type[BaseModel],
    skip: Sequence[str] = (),
    aliases: Mapping[str, str] = {},  # noqa: B006 (read only)
) -> Callable[[F], F]:
    """Give the decorated verb an option for every flat field of ``model``.

    The verb takes a ``flags: dict[str, Any]`` parameter (hidden from the command line) that
    receives the options the user gave; ``aliases`` adds a second, shorter name to a field.
    """

    def decorate(verb: F) -> F:
        signature = inspect.signature(verb, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "flags"]
        derived = []
        for name, field in model.model_fields.items():
            kind = _option_type(field.annotation)
            if name in skip or kind is None:
                continue
            names = [f"--{name.replace('_', '-')}"] + ([aliases[name]] if name in aliases else [])
            choices = typing.get_args(field.annotation) if _is_literal(field.annotation) else ()
            listed = f" One of: {', '.join(choices)}." if choices else ""
            text = (field.description or "") + listed
            option = typer.Option(*names, help=text, show_default=False)
            derived.append(
                inspect.Parameter(
                    _PREFIX + name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None,
                    annotation=Annotated[kind | None, option],
                )
            )

        @functools.wraps(verb)
        def run(**kwargs: Any) -> Any:
            flags = {
                key.removeprefix(_PREFIX): value
                for key, value in kwargs.items()
                if key.startswith(_PREFIX) and value not in (None, [])
            }
            given = {key: value for key, value in kwargs.items() if not key.startswith(_PREFIX)}
            return verb(**given, flags=flags)

        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own]
        run.__signature__ = signature.replace(parameters=own + derived)  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return decorate


def _is_literal(annotation: Any) -> bool:
    return typing.get_origin(annotation) is Literal


def _option_type(annotation: Any) -> Any:
    """The type an option parses for a field, or None for fields only ``--set`` reaches."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return _option_type(args[0]) if len(args) == 1 else None
    if origin is Literal:
        return str  # pydantic checks the choice, and its error lists them
    if origin is list and args and _option_type(args[0]) in (str, int, float, Path):
        return list[_option_type(args[0])]  # type: ignore[misc]
    if annotation is Path:
        return Path
    if annotation in (str, int, float, bool):
        return annotation
    return None
