"""``trajgym new-env NAME``: a working domain skeleton, its own package and tests included."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from trajgym.cli.common import console
from trajgym.errors import ConfigError

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# Template -> where it goes in the new project ({package} is the Python package).
_LAYOUT = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "__init__.py.tmpl": "{package}/__init__.py",
    "policy.md.tmpl": "{package}/policy.md",
    "phrasings.yaml.tmpl": "{package}/phrasings.yaml",
    "expert.yaml.tmpl": "{package}/expert.yaml",
    "user.yaml.tmpl": "{package}/user.yaml",
    "test_domain.py.tmpl": "tests/test_{name}.py",
}


def new_env(
    name: Annotated[str, typer.Argument(help="The domain's name: lower case, e.g. clinic.")],
    directory: Annotated[
        Path, typer.Option("--dir", help="Where to create the project folder NAME.")
    ] = Path("."),
) -> None:
    """Write a working domain skeleton NAME/ (a pip package whose entry point registers it).

    It passes gymnasium's checker, its scripted expert solves every task of every split and
    the floor agents none; its tests say so. `pip install -e NAME` and `trajgym envs` lists it.
    """
    if not _NAME.match(name):
        raise ConfigError(f"'{name}' is not a domain name: use lower case letters, digits, _.")
    target = directory / name
    if target.exists():
        raise ConfigError(f"{target} already exists; choose another name or --dir.")
    fields = {
        "name": name,
        "package": f"trajgym_{name}",
        "env_id": f"{name}/{name.title().replace('_', '')}-v0",
    }
    skeleton = resources.files(__package__).joinpath("skeleton")
    for template, where in _LAYOUT.items():
        text = skeleton.joinpath(template).read_text()
        for key, value in fields.items():
            text = text.replace("{{" + key + "}}", value)
        path = target / where.format(**fields)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    console.print(
        f"Wrote {target}: {fields['env_id']} in package {fields['package']}.\n"
        f"Next: pip install -e {target} && pytest {target / 'tests'} && trajgym envs"
    )
