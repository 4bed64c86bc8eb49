"""Exact shared-prefix forward passes: a micro-batch's common token prefix is computed once.

Every trajgym conversation of an environment starts with the same system turn (policy and
tool schemas) and user header: on RetailLite 345 identical tokens of a 734-token mean row.
SFT, logit distillation's teacher, GRPO's update and reference pass, and on-policy
distillation's teacher all need the model's logits only where the loss is, and those all lie
after that prefix. So :func:`kept_logits` runs the prefix once (batch 1, inside autograd, so
gradients flow back into it from every row), keeps its keys and values, and runs each row's
suffix against them, expanded over the batch, with explicit positions. It returns exactly
what ``model(input_ids, attention_mask, logits_to_keep=keep).logits`` would.

Why past key/values and not one packed row with a block mask (both were measured, SmolLM2-135M
on this 2-core CPU, 4 RetailLite rows, forward+backward): a packed row's attention is dense
over prefix + every suffix, so its cost grows with the square of the micro-batch's tokens
(a 4-row row of 1905 tokens scores 3.6M query-key pairs, the suffix pass 1.15M) and it loses
to the cache as micro-batches grow; the cache path also keeps transformers' own masks.
Figures are in ``bench/sft.py``'s docstring.

Also, nothing after a row's last kept position is computed (a causal model's logits there do
not depend on what follows), and rows without a kept position are dropped. Where rows share
no prefix worth the second pass (fewer than ``min_prefix`` tokens, one row, a left-padded batch,
a model with sliding-window layers), the rows run as one plain, truncated forward pass.

Gradient checkpointing: transformers drops any cache under checkpointing (a layer that wrote
the cache would write it again on the backward replay). The prefix pass runs unchecked (it
is one row: its activations are ``1/rows`` of the plain path's for those tokens); the suffix
pass reads a cache that never writes (``SharedPrefixLayer``), which the layers may keep
under checkpointing (``_can_checkpoint_with_cache``), so the replay reads the same prefix.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MIN_PREFIX = 16  # shorter shared prefixes are not worth a second forward pass


@dataclass(frozen=True)
class Plan:
    """How a micro-batch is computed: the shared prefix, and each kept row's length.

    ``rows`` are the indices of the rows with a kept position; ``lengths`` their lengths once
    truncated after the last kept position; ``prefix`` the tokens computed once (0: the plain
    path).
    """

    rows: tuple[int, ...]
    lengths: tuple[int, ...]
    prefix: int

    @property
    def computed_tokens(self) -> int:
        """Real (non-padding) tokens the model computes: the prefix once, then each suffix."""
        return self.prefix + sum(n - self.prefix for n in self.lengths)


def plan(input_ids: Any, attention_mask: Any, keep: Any, min_prefix: int = MIN_PREFIX) -> Plan:
    """The rows to compute, their truncated lengths, and the prefix they all share.

    The prefix stops before the first kept position of any row, so that every logit asked for
    comes from the suffix pass (two rows sampled alike may share an assistant turn too).
    """
    import torch

    lengths = attention_mask.sum(1)
    width = input_ids.shape[1]
    right_padded = bool(
        (attention_mask.bool() == (torch.arange(width, device=lengths.device) < lengths[:, None]))
        .all()
        .item()
    )
    last = torch.where(keep, torch.arange(width, device=keep.device), -1).max(1).values
    rows = tuple(int(i) for i in torch.nonzero(last >= 0).flatten().tolist())
    if not right_padded:  # left padding: positions differ per row; no truncation either
        return Plan(rows, tuple(width for _ in rows), 0)
    kept = tuple(int(last[i]) + 1 for i in rows)
    if len(rows) < 2:
        return Plan(rows, kept, 0)
    ids = input_ids[list(rows)]
    # The prefix pass computes no logits: it ends before the first position any row keeps.
    limit = int(keep[list(rows)].float().argmax(1).min())
    differs = (ids[:, :limit] != ids[:1, :limit]).any(0)
    common = int(differs.float().argmax()) if bool(differs.any()) else limit
    return Plan(rows, kept, common if common >= min_prefix else 0)


def kept_logits(
    model: Any,
    input_ids: Any,
    attention_mask: Any,
    keep: Any,
    shared: bool = True,
    planned: Plan | None = None,
) -> Any:
    """``model(input_ids, attention_mask, logits_to_keep=keep).logits``, the prefix computed once.

    Args:
        model: A causal LM (transformers, or a peft or DDP model around one).
        input_ids: ``(rows, width)`` token ids, right-padded.
        attention_mask: ``(rows, width)``, 1 on real tokens.
        keep: ``(rows, width)`` bool, the positions whose next-token logits are wanted.
        shared: False: the plain forward pass over every row as given (the path this replaces).
        planned: :func:`plan`'s answer, if the caller made it already.

    Returns:
        ``(keep.sum(), vocab)`` logits, in the row-major order of ``keep``.
    """
    import torch

    if not shared:
        return model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    p = planned or plan(input_ids, attention_mask, keep)
    width = max(p.lengths, default=0)
    rows = list(p.rows)
    ids, attention, kept = input_ids[rows, :width], attention_mask[rows, :width], keep[rows, :width]
    if p.prefix:
        cache = _prefix_cache(model, ids[:1, : p.prefix], len(rows))
        if cache is not None:
            return _suffix_logits(model, ids, attention, kept, p.prefix, cache)
    if not rows:  # nothing kept: an empty (0, vocab) result that still belongs to the graph
        ids, attention = input_ids[:1, :1], attention_mask[:1, :1]
        kept = torch.zeros_like(ids, dtype=torch.bool)
    return model(input_ids=ids, attention_mask=attention, logits_to_keep=kept).logits


def cache_argument(model: Any) -> str:
    """The name the model's forward takes past key/values by (transformers 5: ``cache``)."""
    names = inspect.signature(_transformer(model).forward).parameters
    return "cache" if "cache" in names else "past_key_values"


def _unwrapped(model: Any) -> Any:
    """The model inside a DDP wrapper (called twice, DDP would expect two backward passes)."""
    import torch

    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _transformer(model: Any) -> Any:
    """The transformers model inside any DDP and peft wrappers (its config, its signature)."""
    inner = _unwrapped(model)
    return inner.get_base_model() if hasattr(inner, "get_base_model") else inner


def _prefix_cache(model: Any, prefix_ids: Any, rows: int) -> Any:
    """The prefix's keys and values (one row, in autograd), as a read-only cache of ``rows``."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import Cache, DynamicLayer

    recorded = DynamicCache(config=_transformer(model).config)
    if any(type(layer) is not DynamicLayer for layer in recorded.layers):
        return None  # sliding-window or linear layers keep other state: the plain path
    no_logits = torch.zeros_like(prefix_ids, dtype=torch.bool)
    with _checkpointing(model, enabled=False):
        _unwrapped(model)(
            input_ids=prefix_ids,
            attention_mask=torch.ones_like(prefix_ids),
            logits_to_keep=no_logits,
            use_cache=True,
            **{cache_argument(model): recorded},
        )
    layer = _shared_prefix_layer()
    return Cache(layers=[layer(k, v, rows) for k, v, _ in recorded])


def _suffix_logits(model: Any, ids: Any, attention: Any, kept: Any, prefix: int, cache: Any) -> Any:
    """Each row's tokens after the prefix, attending to the prefix's cached keys and values."""
    import torch

    suffix = ids[:, prefix:]
    positions = torch.arange(prefix, ids.shape[1], device=ids.device)[None].expand_as(suffix)
    with _checkpointing(model, enabled=True, keeps_cache=True):
        out = model(
            input_ids=suffix,
            attention_mask=attention,  # prefix + suffix: the prefix's columns are all ones
            position_ids=positions,
            logits_to_keep=kept[:, prefix:],
            use_cache=False,
            **{cache_argument(model): cache},
        )
    return out.logits


@contextlib.contextmanager
def _checkpointing(model: Any, enabled: bool, keeps_cache: bool = False) -> Iterator[None]:
    """Switch the decoder layers' checkpointing off (or let it keep a read-only cache).

    Only layers the model checkpoints are touched; what they were is restored on exit (a
    backward replay after the exit runs the forward it recorded, cache included).
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    # The model's own flag too: with it, transformers turns ``use_cache`` off (with a warning).
    layers = [m for m in model.modules() if vars(m).get("gradient_checkpointing") is True]
    saved = [
        (m.gradient_checkpointing, m.__dict__.get("_can_checkpoint_with_cache")) for m in layers
    ]
    for m in layers:
        m.gradient_checkpointing = enabled
        if keeps_cache and isinstance(m, GradientCheckpointingLayer):
            m._can_checkpoint_with_cache = True
    try:
        yield
    finally:
        for m, (checkpointed, keeps) in zip(layers, saved, strict=True):
            m.gradient_checkpointing = checkpointed
            if keeps is None:
                m.__dict__.pop("_can_checkpoint_with_cache", None)
            else:
                m._can_checkpoint_with_cache = keeps


@functools.cache
def _shared_prefix_layer() -> type:
    """The cache layer class (made on first use: transformers is imported lazily)."""
    from transformers.cache_utils import DynamicLayer

    class SharedPrefixLayer(DynamicLayer):
        """One layer's prefix keys/values, shared by every row; ``update`` never writes."""

        def __init__(self, keys: Any, values: Any, rows: int) -> None:
            super().__init__()
            self.keys = keys.expand(rows, -1, -1, -1)  # a view: the gradient sums over rows
            self.values = values.expand(rows, -1, -1, -1)
            self.device = keys.device
            self.is_initialized = True

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> Any:
            import torch

            keys: Any = self.keys
            values: Any = self.values
            return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)

    return SharedPrefixLayer
