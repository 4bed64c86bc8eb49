"""Which tokens carry loss: one function, shared by SFT and RL.

Only the assistant's own tokens (its text, its tool calls and its end-of-turn token) are
trained on; system, user and tool tokens never are. The spans are found from the chat
template itself, so any template works: for each assistant message, the conversation up to
it is rendered with the generation prompt, then with the message; the difference is what
the assistant wrote. The spans are mapped to tokens through the tokenizer's offsets.

RL needs no search: a rollout records the tokens the model read and wrote, so
:func:`generated_sequences` marks exactly the written ones, with their sampling log-probs.
On a prefix-stable template both functions mark the same tokens (tested).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from trajgym.errors import TrajgymError

IGNORE_INDEX = -100


class TemplateError(TrajgymError):
    """A chat template whose rendering of a conversation is not prefix-stable."""


@dataclass(frozen=True)
class Tokenized:
    """A conversation as token ids, with the loss mask and labels."""

    input_ids: list[int]
    assistant_mask: list[int]

    @property
    def labels(self) -> list[int]:
        """Input ids where the assistant spoke, IGNORE_INDEX elsewhere."""
        return [
            t if m else IGNORE_INDEX
            for t, m in zip(self.input_ids, self.assistant_mask, strict=True)
        ]


def assistant_spans(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    trained: Collection[int] | None = None,
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant turns.

    Args:
        tokenizer: A tokenizer with a chat template.
        messages: The conversation, OpenAI format.
        tools: Tool schemas the template renders.
        trained: Indices of the assistant messages to return spans for (all if None). On-policy
            distillation trains on the teacher's labels only, not on the student's own turns
            that lead to them.
    """

    def render(part: Sequence[dict[str, Any]], prompt: bool) -> str:
        text = tokenizer.apply_chat_template(
            list(part),
            tools=list(tools) if tools else None,
            tokenize=False,
            add_generation_prompt=prompt,
        )
        return str(text)

    full = render(messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or (trained is not None and i not in trained):
            continue
        before, after = render(messages[:i], True), render(messages[: i + 1], False)
        if not (after.startswith(before) and full.startswith(after.rstrip())):
            raise TemplateError(
                "The chat template does not render the conversation as a growing prefix, so "
                "assistant tokens cannot be found reliably; use a template that does "
                "(e.g. trajgym/agents/templates/chatml_tools.jinja)."
            )
        # Whitespace after the end-of-turn token is layout, not something the model says.
        spans.append((len(before), len(after.rstrip())))
    return full, spans


def tokenize_with_masks(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None = None,
    max_length: int | None = None,
    trained: Collection[int] | None = None,
) -> Tokenized:
    """Tokenize a conversation; mark the tokens that start inside a (trained) assistant span."""
    full, spans = assistant_spans(tokenizer, messages, tools, trained)
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])
    mask = []
    span_index = 0
    for start, end in encoded["offset_mapping"]:
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        inside = span_index < len(spans) and spans[span_index][0] <= start < spans[span_index][1]
        mask.append(1 if inside and end > start else 0)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return Tokenized(ids, mask)


class Generation(Protocol):
    """One turn of a rollout: the tokens the model read, wrote, and their log-probs."""

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        """The tokens the model read."""
        ...

    @property
    def token_ids(self) -> tuple[int, ...]:
        """The tokens it wrote."""
        ...

    @property
    def logprobs(self) -> tuple[float, ...]:
        """Each written token's log-probability when sampled."""
        ...


@dataclass(frozen=True)
class Sampled(Tokenized):
    """A rollout sequence: tokens, the mask of the model's own, their sampling log-probs."""

    old_logprobs: list[float]


def generated_sequences(turns: Sequence[Generation]) -> list[Sampled]:
    """An episode's turns as training sequences, the model's own tokens carrying loss.

    While each turn's prompt begins with everything before it (the previous prompt and
    reply, as on a prefix-stable template), the turns form one sequence, trained in one
    forward pass. Where a prompt does not (a reply the template re-rendered differently), a
    new sequence starts: no token is ever trained in a context the model did not read.
    """
    sequences: list[Sampled] = []
    ids: list[int] = []
    mask: list[int] = []
    old: list[float] = []
    for turn in turns:
        prompt = list(turn.prompt_ids)
        if ids and prompt[: len(ids)] != ids:
            sequences.append(Sampled(ids, mask, old))
            ids, mask, old = [], [], []
        new = prompt[len(ids) :]
        ids, mask, old = ids + new, mask + [0] * len(new), old + [0.0] * len(new)
        ids += turn.token_ids
        mask += [1] * len(turn.token_ids)
        old += turn.logprobs
    if ids:
        sequences.append(Sampled(ids, mask, old))
    return sequences


Row = TypeVar("Row", bound=tuple[Sampled, Any])


def token_budget_batches(batch: Sequence[Row], budget: int) -> list[list[Row]]:
    """Micro-batches of similar lengths whose padded size (rows x longest) fits ``budget``.

    A sequence longer than the budget goes alone. Sorting by length keeps the padding small;
    the order does not matter to a step (micro-batch losses add up to one token mean).
    """
    ordered = sorted(batch, key=lambda item: len(item[0].input_ids))
    micro: list[list[Row]] = []
    for item in ordered:
        longest = len(item[0].input_ids)  # the longest so far: ordered by length
        if micro and (len(micro[-1]) + 1) * longest <= budget:
            micro[-1].append(item)
        else:
            micro.append([item])
    return micro
