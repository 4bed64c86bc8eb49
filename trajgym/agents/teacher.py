"""A teacher agent: any litellm model, with native function calling or a text fallback."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import JsonValue

from trajgym.agents.base import EpisodeContext
from trajgym.agents.tool_text import parse_reply, to_text_messages
from trajgym.llm.client import LLMClient, LLMConfig, to_wire
from trajgym.records.schema import Message, Provenance, Usage

ToolMode = Literal["native", "text"]


class LLMAgent:
    """Plays the assistant with a language model reached through litellm.

    In ``native`` mode the tool schemas go to the provider's function-calling API; in
    ``text`` mode they go in the system prompt and calls are parsed from the reply. Either
    way a call the model gets wrong is kept exactly as written.
    """

    def __init__(
        self,
        config: LLMConfig,
        tool_mode: ToolMode = "native",
        client: LLMClient | None = None,
        kind: Literal["teacher", "on_policy_teacher"] = "teacher",
    ) -> None:
        self.config = config
        self.tool_mode = tool_mode
        self.client = client or LLMClient(config)
        self.kind = kind
        self.usage = Usage()
        self._tools: list[dict[str, object]] = []
        self._turn = 0

    @property
    def provenance(self) -> Provenance:
        """A teacher trajectory, with the model and decoding parameters."""
        decoding: dict[str, JsonValue] = {**self.config.decoding(), "tool_mode": self.tool_mode}
        return Provenance(
            kind=self.kind, agent="LLMAgent", model=self.config.model, decoding=decoding
        )

    def reset(self, context: EpisodeContext) -> None:
        """Take the episode's tools; the task itself stays hidden."""
        self._tools = list(context.tools)
        self.usage = Usage()
        self._turn = 0

    def act(self, messages: Sequence[Message]) -> Message:
        """Ask the model for the next message."""
        self._turn += 1
        if self.tool_mode == "native":
            completion = self.client.complete([to_wire(m) for m in messages], self._tools)
            message = completion.message
        else:
            completion = self.client.complete(to_text_messages(messages, self._tools))
            message = parse_reply(completion.message.text, id_prefix=f"call_{self._turn}")
        self.usage = self.usage + completion.usage
        if message.content is None and not message.tool_calls:
            message = Message(role="assistant", content="")
        return message
