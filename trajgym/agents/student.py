"""A student agent: a local transformers causal LM (optionally with a peft adapter).

The conversation and the tool schemas are rendered with the model's chat template (trajgym's
ChatML-with-tools for the default student, the same one training uses); the reply is parsed
by the lenient text parser, and a call it cannot read is kept as written for the env to
answer with an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trajgym.agents.base import EpisodeContext
from trajgym.agents.kv_sessions import SessionGenerator
from trajgym.agents.replies import Generated, ReplySource
from trajgym.agents.tool_text import parse_reply
from trajgym.records.schema import Message, Provenance, Usage


class StudentConfig(BaseModel):
    """How the student decodes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_new_tokens: int = Field(256, gt=0, description="Most tokens in one reply.")
    temperature: float = Field(0.0, ge=0.0, description="0 decodes greedily.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    seed: int | None = Field(None, description="Sampling seed (per episode when unset).")


class StudentAgent:
    """Plays the assistant with a local model.

    With a shared :class:`Batcher`, the turns of many concurrent episodes generate together.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: StudentConfig | None = None,
        name: str = "student",
        batcher: ReplySource | None = None,
    ) -> None:
        self.model = model
        self.batcher = batcher
        self.tokenizer = tokenizer
        self.config = config or StudentConfig()
        self.name = name
        self.usage = Usage()
        self._tools: list[dict[str, Any]] = []
        self._seed = 0
        self._turn = 0
        self._episodes = 0
        self._session = ""
        self.turns: list[Generated] = []  # this episode's generations, tokens and log-probs
        self._own = None if batcher is not None else SessionGenerator(model, tokenizer, 1)

    @property
    def provenance(self) -> Provenance:
        """A student trajectory (self-generated data when kept for training)."""
        c = self.config
        decoding = {
            "temperature": c.temperature,
            "top_p": c.top_p,
            "max_new_tokens": c.max_new_tokens,
        }
        return Provenance(kind="student", agent="StudentAgent", model=self.name, decoding=decoding)

    def reset(self, context: EpisodeContext) -> None:
        """Take the episode's tools and seed."""
        self._tools = list(context.tools)
        self._seed = self.config.seed if self.config.seed is not None else context.seed
        self.usage = Usage()
        self._turn = 0
        self.turns = []
        self.end()
        self._episodes += 1
        # Named by the episode first (a lockstep batcher orders its batches by this name, so
        # it must not depend on the process), then by this agent (a GRPO group shares a task
        # and a seed, and each member needs its own cache).
        self._session = f"{context.task.id}|{context.seed}|{id(self):x}-{self._episodes}"

    def end(self) -> None:
        """The episode is over: drop its KV cache."""
        if self._session:
            (self.batcher or self._own).forget(self._session)  # type: ignore[union-attr]
            self._session = ""

    def act(self, messages: Sequence[Message]) -> Message:
        """Generate the next assistant message and parse any tool calls in it."""
        import torch

        self._turn += 1
        prompt = self.tokenizer.apply_chat_template(
            [m.to_openai() for m in messages],
            tools=self._tools,
            add_generation_prompt=True,
            tokenize=False,
        )
        if self.batcher is not None:
            reply = self.batcher.submit(prompt, self._session)
        else:
            assert self._own is not None
            c = self.config
            rng = torch.Generator(device=self.model.device)
            rng.manual_seed(self._seed * 1000 + self._turn)
            [reply] = self._own.generate(
                [(self._session, prompt)], c.max_new_tokens, c.temperature, c.top_p, rng
            )
        self.turns.append(reply)
        self.usage = self.usage + Usage(
            prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens
        )
        message = parse_reply(reply.text, id_prefix=f"call_{self._turn}")
        if message.content is None and not message.tool_calls:
            return Message(role="assistant", content="")
        return message
