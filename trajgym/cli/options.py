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
from pydantic_core import PydanticUndefined

from trajgym.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
_PREFIX = "field__"

Overrides = Annotated[
    list[str] | None, typer.Option("--set", help="Override any config key: a.b=value.")
]


def config_options(
    model: type[BaseModel],
    skip: Sequence[str] = (),
    aliases: Mapping[str, str] = {},  # noqa: B006 (read only)
    shown_defaults: Mapping[str, str] = {},  # noqa: B006 (read only)
) -> Callable[[F], F]:
    """Give the decorated verb an option for every flat field of ``model``.

    The verb takes a ``flags: dict[str, Any]`` parameter (hidden from the command line) that
    receives the options the user gave; ``aliases`` adds a second, shorter name to a field.
    Each option's help shows the field's default, or ``shown_defaults[field]`` where the verb
    applies its own. A boolean field is a ``--name / --no-name`` flag pair.
    """

    def decorate(verb: F) -> F:
        signature = inspect.signature(verb, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "flags"]
        derived = []
        for name, field in model.model_fields.items():
            kind = _option_type(field.annotation)
            if name in skip or kind is None:
                continue
            flag = name.replace("_", "-")
            names = [f"--{flag}/--no-{flag}" if kind is bool else f"--{flag}"]
            names += [aliases[name]] if name in aliases else []
            text = field.description or ""
            shown = shown_defaults.get(name) or _shown_default(field.default, flag)
            text += f"  [default: {shown}]" if shown else ""
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
            _refuse_boolean_word_as_config(kwargs.get("config"))
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


def _shown_default(default: Any, flag: str) -> str:
    """A field's default as the help shows it ('' for none: nothing is shown)."""
    if default is None or default is PydanticUndefined or default == []:
        return ""
    if isinstance(default, bool):
        return flag if default else f"no-{flag}"
    if isinstance(default, list):
        return ", ".join(str(item) for item in default)
    return str(default)


def _refuse_boolean_word_as_config(config: Any) -> None:
    """``--balance-families true`` left 'true' as the config file: say what a flag is."""
    if isinstance(config, str) and config.lower() in _BOOLEAN_WORDS and not Path(config).exists():
        raise ConfigError(
            f"'{config}' is not a config file: boolean options are flags that take no value, "
            "e.g. --balance-families or --no-balance-families."
        )


_BOOLEAN_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def _option_type(annotation: Any) -> Any:
    """The type an option parses for a field, or None for fields only ``--set`` reaches."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return _option_type(args[0]) if len(args) == 1 else None
    if origin is Literal:
        return annotation  # typer checks the choice (a usage error) and the help lists them
    if origin is list and args and _option_type(args[0]) in (str, int, float, Path):
        return list[_option_type(args[0])]  # type: ignore[misc]
    if annotation is Path:
        return Path
    if annotation in (str, int, float, bool):
        return annotation
    return None
