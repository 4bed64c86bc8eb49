"""What the generation engine keeps per conversation and per shared prefix."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def ordering_base(session: str) -> str:
    """The part of a session's name that orders it: all but its last ``|`` field.

    A student names its session ``task|seed|agent`` (``agent`` differs between processes and
    runs); sessions that share the rest are exchangeable at their first turn (a GRPO group:
    same task, same seed), and are told apart by their arrival rank instead.
    """
    return session.rsplit("|", 1)[0]


@dataclass
class Prefix:
    """A shared first message: its tokens and their keys/values (layers, kv heads, len, dim)."""

    tokens: tuple[int, ...]
    keys: Any
    values: Any
    start: int = 0  # where it sits in the prefix bank
    users: int = 0  # sessions attending to it


@dataclass
class Session:
    """A conversation: its slot, its prefix, the tokens its cache holds, its current reply."""

    name: str
    base: str
    rank: int
    slot: int
    prefix: Prefix | None = None
    tokens: list[int] = field(default_factory=list)  # prefix + own tokens with keys/values
    pending: list[int] = field(default_factory=list)  # tokens to run at the next step
    request: Any = None  # the request being answered
    generated: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    rng: Any = None
    turn: int = 0
    used: int = 0  # the last step it ran in (least recently used goes first)

    @property
    def key(self) -> str:
        """The session's place in the admission order (and its sampling streams' name)."""
        return f"{self.base}#{self.rank}"

    @property
    def span(self) -> tuple[int, int]:
        """Its prefix's (start, length) in the bank; (0, 0) without one."""
        return (self.prefix.start, len(self.prefix.tokens)) if self.prefix else (0, 0)

    @property
    def past(self) -> int:
        """Own tokens (after the prefix) whose keys/values its slot holds."""
        return len(self.tokens) - self.span[1]
