"""The agent contract: given the conversation so far, produce the next assistant message."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from trajgym.records.schema import Message, Provenance, Task


class EpisodeContext(BaseModel):
    """What an agent is told when an episode starts."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    task: Task
    system_prompt: str
    tools: tuple[dict[str, Any], ...]
    confirm_tools: tuple[str, ...] = ()
    seed: int


class Agent(Protocol):
    """Anything that can play the assistant in an episode."""

    @property
    def provenance(self) -> Provenance:
        """Who this agent is, for the trajectory's record."""
        ...

    def reset(self, context: EpisodeContext) -> None:
        """Prepare for a new episode. Only the scripted expert may read ``context.task``."""
        ...

    def act(self, messages: Sequence[Message]) -> Message:
        """The next assistant message, given every message so far (system prompt first)."""
        ...
