"""What a student's reply is, and where replies come from (a local batcher or a server)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Generated:
    """One reply: its text and token counts; with the KV-session generator, also its tokens.

    ``prompt_ids`` and ``token_ids`` are exactly what the model read and wrote, and
    ``logprobs`` the log-probability of each written token under the sampling distribution:
    RL trains on these, never on a re-tokenization of the text.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    prompt_ids: tuple[int, ...] = ()
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()


class ReplySource(Protocol):
    """Where a student's replies come from: a local :class:`Batcher` or a server."""

    def submit(self, prompt: str, session: str | None = None) -> Generated:
        """One reply to a rendered prompt; ``session`` lets a cache carry over turns."""
        ...

    def forget(self, session: str) -> None:
        """A conversation is over."""
        ...

    def close(self) -> None:
        """Release threads, caches and connections."""
        ...
