"""Stage configs: YAML files plus ``key=value`` overrides, validated by pydantic.

Each stage (generation, export, training...) has one pydantic model; this module loads it
from YAML, applies dotted overrides from the command line, explains validation errors in
one line each, and saves the resolved config next to the stage's outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from trajgym.errors import ConfigError

C = TypeVar("C", bound=BaseModel)


def load_config(
    model: type[C],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    values: Mapping[str, Any] | None = None,
) -> C:
    """Build ``model`` from a YAML file (optional), field ``values``, then ``a.b=value``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            what = "is a folder, not a YAML file" if path.is_dir() else "does not exist"
            raise ConfigError(f"Config file '{path}' {what}.")
        try:
            with path.open() as f:  # PyYAML's message then names the file, not "<unicode string>"
                loaded = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"Config file '{path}' is not valid YAML: {e}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"Config file '{path}' must hold a mapping at the top level.")
        data = loaded
    data.update(values or {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"Override '{item}' must look like key=value (e.g. split=test).")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"Override '{item}': its value is not valid YAML: {e}") from None
        _set(data, key.strip().split("."), value)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in e.errors(include_url=False)
        )
        source = f" in '{path}'" if path else ""
        raise ConfigError(f"Invalid {model.__name__}{source}: {problems}") from None


def save_config(config: BaseModel, path: str | Path) -> Path:
    """Write the resolved config as YAML (no secrets live in configs by construction)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return path


def _set(data: dict[str, Any], keys: list[str], value: Any) -> None:
    for key in keys[:-1]:
        child = data.setdefault(key, {})
        if not isinstance(child, dict):
            child = data[key] = {}
        data = child
    data[keys[-1]] = value
