"""Choosing each row's next token: greedy or nucleus sampling, each row on its own stream.

A row's random stream is seeded by the engine's seed, its session's ordering key and its turn
(:func:`row_seed`), never by its place in a batch: which rows share a step cannot change what a
row samples, so sampled episodes replay from their seeds alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sampling:
    """How replies are decoded."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int = 0


def row_seed(seed: int, key: str, turn: int) -> int:
    """A stable 63-bit seed for one reply of one session."""
    digest = hashlib.sha256(f"{seed}|{key}|{turn}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def choose(logits: Any, sampling: Sampling, generators: list[Any]) -> tuple[list[int], list[float]]:
    """Each row's token and its log-probability at the sampling temperature (1 when greedy).

    ``logits`` is (rows, vocab) fp32; ``generators`` holds one torch.Generator per row.
    """
    import torch

    greedy = sampling.temperature <= 0
    scaled = logits if greedy else logits / sampling.temperature
    if greedy:
        tokens = logits.argmax(-1)
    else:
        probs = torch.softmax(scaled, dim=-1)
        if sampling.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            outside = sorted_p.cumsum(-1) - sorted_p > sampling.top_p  # smallest set reaching p
            sorted_p[outside] = 0
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
        tokens = torch.stack(
            [
                torch.multinomial(p, 1, generator=g).squeeze(-1)
                for p, g in zip(probs, generators, strict=True)
            ]
        )
    chosen = torch.log_softmax(scaled, dim=-1).gather(-1, tokens[:, None]).squeeze(-1)
    return tokens.tolist(), chosen.tolist()
