"""Gymnasium spaces whose elements are pydantic models (chat text does not fit `spaces.Text`)."""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium import spaces
from pydantic import BaseModel, ConfigDict, ValidationError

from trajgym.records.schema import FunctionCall, Message, ToolCall


class Observation(BaseModel):
    """What the agent receives after a step: the new tool results and/or the user's reply."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    messages: tuple[Message, ...]


class ModelSpace(spaces.Space[Any]):
    """A space of instances of one pydantic model; ``contains`` validates."""

    def __init__(self, model: type[BaseModel], seed: int | None = None) -> None:
        super().__init__(shape=None, dtype=None, seed=seed)
        self.model = model

    def contains(self, x: Any) -> bool:
        """Whether ``x`` is, or validates as, an instance of the model."""
        if isinstance(x, self.model):
            return True
        try:
            self.model.model_validate(x)
        except ValidationError:
            return False
        return True

    @property
    def is_np_flattenable(self) -> bool:
        """Chat messages have no fixed-size array form."""
        return False

    def __repr__(self) -> str:
        return f"ModelSpace({self.model.__name__})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelSpace) and other.model is self.model


class ObservationSpace(ModelSpace):
    """Observations: a batch of tool and user messages."""

    def __init__(self, seed: int | None = None) -> None:
        super().__init__(Observation, seed=seed)

    def sample(self, mask: Any = None, probability: Any = None) -> Observation:
        """A random user message."""
        return Observation(messages=(Message(role="user", content=_random_text(self.np_random)),))


class ActionSpace(ModelSpace):
    """Actions: an assistant message with text and/or tool calls to the env's tools."""

    def __init__(self, tool_names: Sequence[str], seed: int | None = None) -> None:
        super().__init__(Message, seed=seed)
        self.tool_names = tuple(tool_names)

    def contains(self, x: Any) -> bool:
        """Only assistant messages are actions."""
        return super().contains(x) and _role(x) == "assistant"

    def sample(self, mask: Any = None, probability: Any = None) -> Message:
        """A random assistant message: text, or one tool call with arbitrary arguments."""
        rng = self.np_random
        if rng.random() < 0.5:
            return Message(role="assistant", content=_random_text(rng))
        name = str(rng.choice(self.tool_names))
        args = {_random_word(rng): _random_word(rng) for _ in range(int(rng.integers(0, 3)))}
        call = ToolCall(
            id=f"call_{rng.integers(10**8)}",
            function=FunctionCall(name=name, arguments=json.dumps(args)),
        )
        return Message(role="assistant", tool_calls=(call,))


def _role(x: Any) -> Any:
    return x.role if isinstance(x, Message) else x.get("role")


def _random_word(rng: np.random.Generator) -> str:
    letters = rng.choice(list(string.ascii_lowercase), size=int(rng.integers(1, 9)))
    return "".join(letters)


def _random_text(rng: np.random.Generator) -> str:
    return " ".join(_random_word(rng) for _ in range(int(rng.integers(1, 12))))
