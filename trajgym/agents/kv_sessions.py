"""Batched generation that keeps each conversation's KV cache from one turn to the next.

A conversation grows by a few dozen tokens a turn, but re-reading it from the start costs a
full prefill every turn (on a 2-core CPU ~600 tokens/s: a second per turn for a short
conversation). Here each session keeps the keys and values of the tokens it has seen; a new
turn only runs its new tokens. Sessions of different lengths share one batch: each row's past
is left-padded to the longest past and its new tokens to the longest new part, the padding
masked, positions given explicitly, so every row computes exactly what it would alone.
"""

from __future__ import annotations

import inspect
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from trajgym.agents.replies import Generated


@dataclass
class _Session:
    tokens: list[int]  # the tokens whose keys/values `kv` holds
    kv: list[tuple[Any, Any]]  # per layer: keys, values of shape (kv_heads, len(tokens), dim)


class SessionGenerator:
    """Generates replies for many sessions at once, reusing each session's cache.

    At most ``max_sessions`` caches are kept (least recently used dropped first); a dropped
    or unknown session simply starts from an empty cache.
    """

    def __init__(self, model: Any, tokenizer: Any, max_sessions: int = 64) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[str, _Session] = OrderedDict()
        self.reused_tokens = 0  # prompt tokens served from a cache, for inspection
        self.computed_tokens = 0
        # A peft model passes extra arguments through: ask the model underneath.
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        names = inspect.signature(base.forward).parameters
        self._cache_arg = "cache" if "cache" in names else "past_key_values"

    def forget(self, session: str) -> None:
        """Drop a finished conversation's cache."""
        self.sessions.pop(session, None)

    def generate(
        self,
        requests: list[tuple[str, str | list[int]]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        generator: Any = None,
        stop_at_eos: bool = True,
    ) -> list[Generated]:
        """Reply to each ``(session, rendered prompt or its token ids)``; sessions must differ.

        ``stop_at_eos=False`` always generates ``max_new_tokens`` (for benchmarks).
        """
        import torch

        prompts = [
            list(p)
            if isinstance(p, list)
            else self.tokenizer(p, add_special_tokens=False).input_ids
            for _, p in requests
        ]
        starts = [self._reusable(key, ids) for (key, _), ids in zip(requests, prompts, strict=True)]
        reuse = [n for _, n in starts]
        rows, device = len(requests), self.model.device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids, positions, attention = _padded_inputs(prompts, reuse, pad)
        past_w, new_w = max(reuse), input_ids.shape[1]
        self.reused_tokens += sum(reuse)
        self.computed_tokens += sum(len(ids) - r for ids, r in zip(prompts, reuse, strict=True))
        cache = self._padded_cache(starts, past_w)
        finished = [False] * rows
        generated: list[list[int]] = [[] for _ in range(rows)]
        logprobs: list[list[float]] = [[] for _ in range(rows)]
        eos = self.tokenizer.eos_token_id if stop_at_eos else None
        step_ids, step_pos = input_ids.to(device), positions.to(device)
        attention = attention.to(device)
        next_pos = torch.tensor([len(ids) for ids in prompts], device=device)
        with torch.no_grad():
            for step in range(max_new_tokens):
                out = self.model(
                    input_ids=step_ids,
                    attention_mask=attention,
                    position_ids=step_pos,
                    use_cache=True,
                    logits_to_keep=1,
                    **{self._cache_arg: cache},
                )
                cache = getattr(out, self._cache_arg)
                logits = out.logits[:, -1].float()
                token = _pick(logits, temperature, top_p, generator)
                chosen = _logprob(logits, token, temperature).tolist()
                for i, t in enumerate(token.tolist()):
                    if not finished[i]:
                        generated[i].append(t)
                        logprobs[i].append(chosen[i])
                        finished[i] = t == eos
                if all(finished) or step == max_new_tokens - 1:
                    break
                step_ids, step_pos = token[:, None], next_pos[:, None]
                next_pos = next_pos + 1
                attention = torch.cat([attention, attention.new_ones((rows, 1))], dim=1)
        self._store(requests, prompts, generated, cache, attention, past_w + new_w)
        return [
            Generated(
                self.tokenizer.decode(g, skip_special_tokens=True),
                len(ids),
                len(g),
                tuple(ids),
                tuple(g),
                tuple(lp),
            )
            for ids, g, lp in zip(prompts, generated, logprobs, strict=True)
        ]

    # Cache bookkeeping -------------------------------------------------------------------

    def _reusable(self, key: str, ids: list[int]) -> tuple[str | None, int]:
        """The cache to start from and how many leading prompt tokens it holds (never all).

        A session continues its own cache; a new one borrows the longest matching prefix of
        any kept session (conversations in one environment share their system prompt).
        """
        candidates = [key] if key in self.sessions else list(self.sessions)
        donor, best = None, 0
        for candidate in candidates:
            n = len(os.path.commonprefix([self.sessions[candidate].tokens, ids]))
            if n > best:
                donor, best = candidate, n
        return donor, min(best, len(ids) - 1)  # the last prompt token runs, for the logits

    def _padded_cache(self, starts: list[tuple[str | None, int]], width: int) -> Any:
        """Every row's reusable past, left-padded to ``width``; None when nothing is reused."""
        if width == 0:
            return None
        from transformers import DynamicCache

        template = next(self.sessions[k].kv for k, r in starts if k is not None and r)
        layers = []
        for layer, (k0, v0) in enumerate(template):
            heads = k0.shape[0]
            keys_t = k0.new_zeros((len(starts), heads, width, k0.shape[-1]))
            values_t = v0.new_zeros((len(starts), heads, width, v0.shape[-1]))
            for i, (donor, r) in enumerate(starts):
                if donor is not None and r:
                    k, v = self.sessions[donor].kv[layer]
                    keys_t[i, :, width - r :] = k[:, :r]
                    values_t[i, :, width - r :] = v[:, :r]
            layers.append((keys_t, values_t))
        return DynamicCache(ddp_cache_data=layers)

    def _store(
        self,
        requests: list[tuple[str, str | list[int]]],
        prompts: list[list[int]],
        generated: list[list[int]],
        cache: Any,
        attention: Any,
        prompt_width: int,
    ) -> None:
        """Keep, per session, the keys/values of its prompt and of the reply tokens fed back."""
        import torch

        layers = [(layer.keys, layer.values) for layer in cache.layers]
        for i, ((key, _), ids, g) in enumerate(zip(requests, prompts, generated, strict=True)):
            fed = max(len(g) - 1, 0)  # the last reply token was never run through the model
            prompt_columns = attention[i, :prompt_width].nonzero().flatten()
            reply_columns = prompt_width + torch.arange(fed, device=prompt_columns.device)
            columns = torch.cat([prompt_columns, reply_columns])
            kv = [(k[i][:, columns].clone(), v[i][:, columns].clone()) for k, v in layers]
            self.sessions[key] = _Session(tokens=ids + g[:fed], kv=kv)
            self.sessions.move_to_end(key)
        while len(self.sessions) > self.max_sessions:
            self.sessions.popitem(last=False)


def _logprob(logits: Any, token: Any, temperature: float) -> Any:
    """Each chosen token's log-probability at the sampling temperature (1 when greedy)."""
    import torch

    scaled = logits / temperature if temperature > 0 else logits
    return torch.log_softmax(scaled, dim=-1).gather(-1, token[:, None]).squeeze(-1)


def _pick(logits: Any, temperature: float, top_p: float, generator: Any) -> Any:
    """Greedy at temperature 0, else nucleus sampling."""
    import torch

    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
        sorted_p[outside] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _padded_inputs(prompts: list[list[int]], reuse: list[int], pad: int) -> tuple[Any, Any, Any]:
    """New tokens left-padded to the longest, their positions, and the mask over past + new."""
    import torch

    past_w = max(reuse)
    new_w = max(len(ids) - r for ids, r in zip(prompts, reuse, strict=True))
    rows = len(prompts)
    input_ids = torch.full((rows, new_w), pad, dtype=torch.long)
    positions = torch.zeros((rows, new_w), dtype=torch.long)
    attention = torch.zeros((rows, past_w + new_w), dtype=torch.long)
    for i, (ids, r) in enumerate(zip(prompts, reuse, strict=True)):
        n = len(ids) - r
        input_ids[i, new_w - n :] = torch.tensor(ids[r:])
        positions[i, new_w - n :] = torch.arange(r, len(ids))
        attention[i, past_w - r : past_w] = 1
        attention[i, past_w + new_w - n :] = 1
    return input_ids, positions, attention
