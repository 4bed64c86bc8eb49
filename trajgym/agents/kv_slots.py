"""The generation engine's KV cache: fixed slots written in place, and shared prefixes.

Each conversation owns a *slot*: per layer, room for ``length`` keys and values, allocated
once (``torch.empty``: the pages are only committed as positions are first used). A step
writes its new tokens' keys and values at their positions and attends to views of the slots,
so nothing is concatenated or re-padded per step, and a conversation's cache stays where it
is from one turn to the next.

A *prefix* (the system prompt and tool schemas every episode of an environment starts with)
is computed once and kept in the prefix bank; every row attends to its prefix there and to
its own slot after it, and the two are merged by their log-sum-exps. No row copies the prefix.

Keys and values beyond a slot's length are masked, but masked entries still pass through
the matmuls, so they must be finite: the first use of each region zeroes it
(:meth:`KVSlots.prepare`), before anything is written there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

_ZERO_CHUNK = 256  # positions zeroed at a time as slots grow


@dataclass
class Prefill:
    """A row running several tokens: its slot, its tokens in the pack, its own start."""

    slot: int
    start: int  # index of its first token in the packed step
    count: int
    past: int  # own tokens already in its slot
    prefix: tuple[int, int]  # its span in the prefix bank (start, length)


@dataclass
class StepPlan:
    """One step's packed tokens and where each row's keys, values and logits go."""

    tokens: torch.Tensor  # (n,) token ids, rows one after another
    positions: torch.Tensor  # (n,) absolute positions (prefix + own)
    slots: torch.Tensor  # (n,) the slot each token's key/value is written to
    offsets: torch.Tensor  # (n,) where in that slot
    last: torch.Tensor  # (rows,) each row's last token in the pack
    prefills: list[Prefill] = field(default_factory=list)
    # Rows running one token attend together over slots [0, width_rows):
    decode_tokens: torch.Tensor | None = None  # their tokens in the pack
    decode_slots: torch.Tensor | None = None
    decode_rows: int = 0  # slots [0, decode_rows) cover every decoding slot
    decode_width: int = 0  # own positions they attend to
    decode_mask: torch.Tensor | None = None  # (rows, 1, 1, width) additive: own positions
    decode_shared: torch.Tensor | None = None  # (rows, bank) True = seen; None: all of it
    _bank_mask: torch.Tensor | None = None

    def bank_mask(self, group: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The decoding rows' additive mask over the bank, a row per (row, query head)."""
        if self.decode_shared is None:
            return None
        if self._bank_mask is None:  # made once per step, used by every layer
            visible = self.decode_shared.repeat_interleave(group, dim=0)
            self._bank_mask = _additive(visible, dtype)[None, None]
        return self._bank_mask


class KVSlots:
    """Preallocated per-layer keys/values for ``slots`` conversations of ``length`` tokens.

    One extra slot (index ``slots``) is scratch space where a new prefix is computed.
    """

    def __init__(
        self, layers: int, kv_heads: int, head_dim: int, slots: int, length: int, dtype: Any
    ) -> None:
        shape = (layers, slots + 1, kv_heads, length, head_dim)
        self.keys = torch.empty(shape, dtype=dtype)
        self.values = torch.empty(shape, dtype=dtype)
        self.slots, self.length = slots, length
        self.scratch = slots
        self.bank_keys = self.keys.new_zeros((layers, kv_heads, 0, head_dim))
        self.bank_values = self.bank_keys
        self._clean_slots = 0  # slots [0, _clean_slots) hold finite values up to _clean_width
        self._clean_width = 0

    def release(self) -> None:
        """Free the buffers (the cache is unusable after)."""
        self.keys = self.values = self.keys.new_empty(0)
        self.bank_keys = self.bank_values = self.keys

    def grown(self, slots: int, length: int) -> KVSlots:
        """A larger cache holding this one's slots and prefixes (a run outgrew it: rare)."""
        layers, _, kv, _, dim = self.keys.shape
        bigger = KVSlots(
            layers, kv, dim, max(slots, self.slots), max(length, self.length), self.keys.dtype
        )
        rows, width = self._clean_slots, self._clean_width  # every written position is in here
        bigger.keys[:, :rows, :, :width] = self.keys[:, :rows, :, :width]
        bigger.values[:, :rows, :, :width] = self.values[:, :rows, :, :width]
        bigger._clean_slots, bigger._clean_width = rows, width
        bigger.bank_keys, bigger.bank_values = self.bank_keys, self.bank_values
        return bigger

    @property
    def bank_length(self) -> int:
        """Positions in the prefix bank (all prefixes end to end)."""
        return int(self.bank_keys.shape[2])

    def prepare(self, rows: int, width: int) -> None:
        """Make positions ``[0, width)`` of slots ``[0, rows)`` finite before a step writes.

        Called with the extent of everything a step writes or reads (the scratch slot aside:
        only its written positions are ever read), so zeroing never hits a written position.
        """
        if width > self._clean_width:
            end = min(-(-width // _ZERO_CHUNK) * _ZERO_CHUNK, self.length)
            for t in (self.keys, self.values):
                t[:, : self._clean_slots, :, self._clean_width : end].zero_()
            self._clean_width = end
        if rows > self._clean_slots:
            for t in (self.keys, self.values):
                t[:, self._clean_slots : rows, :, : self._clean_width].zero_()
            self._clean_slots = rows

    def set_bank(self, keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """The prefix bank: these prefixes' keys/values, each (layers, kv heads, len, dim)."""
        shape = (*self.bank_keys.shape[:2], 0, self.bank_keys.shape[3])
        self.bank_keys = torch.cat(keys, dim=2) if keys else self.keys.new_zeros(shape)
        self.bank_values = torch.cat(values, dim=2) if values else self.bank_keys

    def scratch_prefix(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of the prefix just computed in the scratch slot."""
        keys = self.keys[:, self.scratch, :, :length].clone()
        return keys, self.values[:, self.scratch, :, :length].clone()

    def move(self, source: int, target: int, length: int) -> None:
        """Move a conversation to another slot (compacting the slots in use)."""
        self.keys[:, target, :, :length] = self.keys[:, source, :, :length]
        self.values[:, target, :, :length] = self.values[:, source, :, :length]

    # The forward pass's two calls per layer ---------------------------------------------------

    def write(self, layer: int, plan: StepPlan, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store the step's new keys/values (tokens, kv heads, dim) at their slot positions."""
        self.keys[layer, plan.slots, :, plan.offsets] = k
        self.values[layer, plan.slots, :, plan.offsets] = v

    def attend(self, layer: int, q: torch.Tensor, plan: StepPlan, scale: float) -> torch.Tensor:
        """Each token's attention output (tokens, heads, dim) over its prefix and its slot."""
        out = torch.empty_like(q)
        if plan.decode_tokens is not None:
            out[plan.decode_tokens] = self._decode(layer, q, plan, scale)
        for row in plan.prefills:
            out[row.start : row.start + row.count] = self._prefill(layer, q, row, scale)
        return out

    def _decode(self, layer: int, q: torch.Tensor, plan: StepPlan, scale: float) -> torch.Tensor:
        """One token per row, slots [0, rows) at once (rows not decoding ride along unused)."""
        assert plan.decode_tokens is not None and plan.decode_slots is not None
        rows, width, kv = plan.decode_rows, plan.decode_width, self.keys.shape[2]
        heads, dim = q.shape[1], q.shape[2]
        group = heads // kv
        queries = q[plan.decode_tokens]
        if queries.shape[0] != rows:  # some slots do not decode: give them a dummy query
            dense = q.new_zeros((rows, heads, dim))
            dense[plan.decode_slots] = queries
            queries = dense
        # A kv head's query heads are its "positions": grouped-query attention, no KV copied.
        qg = queries.view(rows, kv, group, dim)
        keys = self.keys[layer, :rows, :, :width]
        values = self.values[layer, :rows, :, :width]
        out, lse = _attention(qg, keys, values, plan.decode_mask, scale)
        bank = self.bank_length
        if bank:  # every row's queries against the bank at once, per kv head
            flat = qg.permute(1, 0, 2, 3).reshape(1, kv, rows * group, dim)
            bank_k, bank_v = self.bank_keys[layer][None], self.bank_values[layer][None]
            mask = plan.bank_mask(group, q.dtype)
            shared, shared_lse = _attention(flat, bank_k, bank_v, mask, scale)
            shared = shared.view(kv, rows, group, dim).permute(1, 0, 2, 3)
            shared_lse = shared_lse.view(kv, rows, group).permute(1, 0, 2)
            if plan.decode_shared is not None:  # a row without a prefix takes nothing from it
                without = ~plan.decode_shared.any(dim=-1)[:, None, None]
                shared_lse = shared_lse.masked_fill(without, float("-inf"))
            out = _merge(out, lse, shared, shared_lse)
        return out.reshape(rows, heads, dim)[plan.decode_slots]

    def _prefill(self, layer: int, q: torch.Tensor, row: Prefill, scale: float) -> torch.Tensor:
        """Several tokens of one row, causal within the row."""
        kv, dim = self.keys.shape[2], q.shape[2]
        t, heads = row.count, q.shape[1]
        group = heads // kv
        qr = q[row.start : row.start + t].view(t, kv, group, dim).permute(1, 2, 0, 3)
        flat = qr.reshape(1, kv, group * t, dim)  # a kv head's (query head, token) pairs
        seen = row.past + t
        keys = self.keys[layer, row.slot, :, :seen][None]
        values = self.values[layer, row.slot, :, :seen][None]
        own = torch.arange(seen, device=q.device)[None] <= row.past + torch.arange(t)[:, None]
        out, lse = _attention(flat, keys, values, _additive(own.repeat(group, 1), q.dtype), scale)
        start, length = row.prefix
        if length:  # the whole prefix is visible to every token
            bank_k = self.bank_keys[layer, :, start : start + length][None]
            bank_v = self.bank_values[layer, :, start : start + length][None]
            shared, shared_lse = _attention(flat, bank_k, bank_v, None, scale)
            out = _merge(out, lse, shared, shared_lse)
        return out.view(kv, group, t, dim).permute(2, 0, 1, 3).reshape(t, heads, dim)


# PyTorch's CPU flash-attention kernel: fp32 accumulation for bf16, strided keys read in
# place, and it returns the log-sum-exp that merging two key sets needs. On bf16 decoding it
# is ~3x the matmul-softmax-matmul it replaced (strided bf16 batched matmuls are slow on CPU).
_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention (B, H, Lq, dim) and its log-sum-exp (B, H, Lq), in fp32.

    ``mask`` is additive (0 or -inf), of q's dtype, broadcast to (B, H, Lq, Lk).
    """
    if q.device.type == "cpu" and _CPU_FLASH is not None:
        out, lse = _CPU_FLASH(q, k, v, 0.0, False, attn_mask=mask, scale=scale)
        return out, lse
    s = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # as eager attention
    if mask is not None:
        s = s + mask.float()
    return torch.matmul(torch.softmax(s, dim=-1).to(v.dtype), v), torch.logsumexp(s, dim=-1)


def _merge(
    out: torch.Tensor, lse: torch.Tensor, other: torch.Tensor, other_lse: torch.Tensor
) -> torch.Tensor:
    """Attention over two key sets at once, from each set's output and log-sum-exp.

    ``out``'s keys are never all masked (a row sees at least its own token); where
    ``other``'s all are (a row without a prefix), the caller sets its log-sum-exp to -inf
    (the CPU kernel returns a finite one there): its weight is then zero, its output ignored.
    """
    top = torch.maximum(lse, other_lse)
    w, w_other = torch.exp(lse - top)[..., None], torch.exp(other_lse - top)[..., None]
    other = torch.where(w_other > 0, other.float(), 0.0)
    return ((out.float() * w + other * w_other) / (w + w_other)).to(out.dtype)


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = attend) as the additive one attention kernels take."""
    return torch.zeros(visible.shape, dtype=dtype).masked_fill(~visible, float("-inf"))


@dataclass
class RowStep:
    """What one row runs in a step."""

    slot: int
    tokens: list[int]  # its new tokens (one when decoding)
    past: int  # own tokens already in its slot
    prefix: tuple[int, int]  # its prefix's span in the bank (start, length); (0, 0): none


def make_plan(rows: list[RowStep], cache: KVSlots) -> StepPlan:
    """Pack the rows' tokens, say where each writes, and zero what the step will touch."""
    tokens: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    offsets: list[int] = []
    last: list[int] = []
    prefills: list[Prefill] = []
    decoding: list[tuple[int, RowStep]] = []
    for r in rows:
        start, t = len(tokens), len(r.tokens)
        tokens += r.tokens
        positions += range(r.prefix[1] + r.past, r.prefix[1] + r.past + t)
        slots += [r.slot] * t
        offsets += range(r.past, r.past + t)
        last.append(start + t - 1)
        if t == 1 and r.slot != cache.scratch:
            decoding.append((start, r))
        else:
            prefills.append(Prefill(r.slot, start, t, r.past, r.prefix))
    plan = StepPlan(
        tokens=torch.tensor(tokens),
        positions=torch.tensor(positions),
        slots=torch.tensor(slots),
        offsets=torch.tensor(offsets),
        last=torch.tensor(last),
        prefills=prefills,
    )
    kept = [r for r in rows if r.slot != cache.scratch]
    extent = max((r.past + len(r.tokens) for r in kept), default=0)
    if decoding:
        _plan_decode(plan, decoding, cache)
    cache.prepare(max((r.slot + 1 for r in kept), default=0), max(extent, plan.decode_width))
    return plan


def _plan_decode(plan: StepPlan, decoding: list[tuple[int, RowStep]], cache: KVSlots) -> None:
    """The decoding rows' batched attention: which slots, how wide, what each row sees."""
    rows = max(r.slot for _, r in decoding) + 1
    width = max(r.past + 1 for _, r in decoding)
    seen = torch.ones(rows, dtype=torch.long)  # a row not decoding sees position 0 (unused)
    spans = torch.tensor([[0, cache.bank_length]] * rows, dtype=torch.long)  # and all the bank
    for _, r in decoding:
        seen[r.slot] = r.past + 1
        spans[r.slot, 0], spans[r.slot, 1] = r.prefix[0], r.prefix[0] + r.prefix[1]
    own = torch.arange(width)[None] < seen[:, None]
    bank = torch.arange(cache.bank_length)[None]
    shared = (bank >= spans[:, :1]) & (bank < spans[:, 1:])
    plan.decode_tokens = torch.tensor([start for start, _ in decoding])
    plan.decode_slots = torch.tensor([r.slot for _, r in decoding])
    plan.decode_rows, plan.decode_width = rows, width
    plan.decode_mask = _additive(own, cache.keys.dtype)[:, None, None]
    plan.decode_shared = None if bool(shared.all()) else shared
