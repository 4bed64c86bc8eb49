"""Floor baselines: an agent that does nothing, and one that calls random tools.

Both must score 0 on every task; if either ever succeeds, verification is too lenient.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from typing import Any

from trajgym.agents.base import EpisodeContext
from trajgym.records.schema import FunctionCall, Message, Provenance, ToolCall


class DoNothingAgent:
    """Chats politely and never uses a tool."""

    @property
    def provenance(self) -> Provenance:
        """A baseline trajectory."""
        return Provenance(kind="baseline", agent="DoNothingAgent")

    def reset(self, context: EpisodeContext) -> None:
        """Nothing to prepare."""

    def act(self, messages: Sequence[Message]) -> Message:
        """Always the same non-committal answer."""
        return Message(role="assistant", content="Thank you for reaching out. How else can I help?")


class RandomToolAgent:
    """Calls random tools with random, schema-shaped arguments, then says something random."""

    def __init__(self, calls_per_turn: int = 3) -> None:
        self.calls_per_turn = calls_per_turn

    @property
    def provenance(self) -> Provenance:
        """A baseline trajectory."""
        return Provenance(kind="baseline", agent="RandomToolAgent")

    def reset(self, context: EpisodeContext) -> None:
        """Seed the randomness from the episode."""
        self.rng = random.Random(context.seed)
        self.tools = context.tools
        self._n = 0

    def act(self, messages: Sequence[Message]) -> Message:
        """A random tool call, or every few steps a random sentence to the user."""
        self._n += 1
        if self._n % (self.calls_per_turn + 1) == 0:
            text = "".join(self.rng.choice(string.ascii_lowercase) for _ in range(8))
            return Message(role="assistant", content=text + "?")
        schema = self.rng.choice(self.tools)["function"]
        props: dict[str, Any] = schema["parameters"].get("properties", {})
        args = {name: self._value(spec) for name, spec in props.items()}
        call = ToolCall(
            id=f"call_{self._n}",
            function=FunctionCall(name=schema["name"], arguments=json.dumps(args)),
        )
        return Message(role="assistant", tool_calls=(call,))

    def _value(self, spec: dict[str, Any]) -> Any:
        if "enum" in spec:
            return self.rng.choice(spec["enum"])
        if spec.get("type") == "array":
            return [self._word(10) for _ in range(self.rng.randint(1, 2))]
        if spec.get("type") in ("integer", "number"):
            return self.rng.randint(0, 10**6)
        return self._word(10)

    def _word(self, n: int) -> str:
        return "".join(self.rng.choice(string.ascii_lowercase + string.digits) for _ in range(n))
