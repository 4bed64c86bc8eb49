"""The simulated user's contract, and personas (loaded from data)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Protocol

import yaml
from pydantic import BaseModel, ConfigDict

from trajgym.errors import ConfigError
from trajgym.records.schema import Message, Task

STOP = "###STOP###"
"""A user message containing this marker ends the episode."""


class Persona(BaseModel):
    """How a simulated user talks; the scripted user picks its phrases from these lists."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    opening: tuple[str, ...]
    provide: tuple[str, ...]
    affirm: tuple[str, ...]
    unknown: tuple[str, ...]
    done: tuple[str, ...]


class User(Protocol):
    """A simulated user pursuing a task's hidden goal."""

    def opening(self) -> Message:
        """The user's first message."""
        ...

    def reply(self, transcript: Sequence[Message]) -> Message:
        """Answer the agent's last message, given the whole conversation so far."""
        ...


UserFactory = Callable[[Task, Persona, int], User]
"""Builds a user for one episode from the task, a persona and a seed."""


@functools.cache
def load_personas() -> dict[str, Persona]:
    """All personas shipped with trajgym, by name."""
    raw = yaml.safe_load(resources.files(__package__).joinpath("personas.yaml").read_text())
    return {name: Persona(name=name, **spec) for name, spec in raw.items()}


def get_persona(name: str) -> Persona:
    """A persona by name, or a clear error listing the known ones."""
    personas = load_personas()
    if name not in personas:
        raise ConfigError(f"Unknown persona '{name}'. Known personas: {', '.join(personas)}.")
    return personas[name]
