"""The engine's attention over its KV slots and prefix bank, held to plain attention.

One step mixes what a real one can: decoding rows with different prefixes in the bank, a
decoding row with no prefix, a slot that rides along unused, and a row prefilling several
tokens causally after its own cached ones.
"""

from __future__ import annotations

import pytest
import torch

from trajgym.agents.kv_slots import KVSlots, RowStep, make_plan

KV, GROUP, DIM = 2, 3, 8  # grouped-query attention: 3 query heads per kv head


def _reference(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, causal_from: int):
    """softmax(q k / sqrt(d)) v per query head; query i sees keys [0, causal_from + i]."""
    heads = q.shape[1]
    k = keys.repeat_interleave(GROUP, dim=0)  # (heads, n, dim)
    v = values.repeat_interleave(GROUP, dim=0)
    scores = torch.einsum("thd,hnd->thn", q, k) * DIM**-0.5
    n = keys.shape[1]
    visible = torch.arange(n)[None] <= causal_from + torch.arange(q.shape[0])[:, None]
    scores = scores.masked_fill(~visible[:, None], float("-inf"))
    assert heads == KV * GROUP
    return torch.einsum("thn,hnd->thd", torch.softmax(scores, -1), v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_mixed_step_attends_as_plain_attention_would(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    cache = KVSlots(layers=1, kv_heads=KV, head_dim=DIM, slots=5, length=32, dtype=dtype)
    bank = [torch.randn(1, KV, n, DIM, dtype=dtype) for n in (5, 3)]  # two prefixes
    cache.set_bank(bank, [torch.randn_like(b) for b in bank])
    rows = [
        RowStep(slot=0, tokens=[11], past=6, prefix=(0, 5)),
        RowStep(slot=1, tokens=[12], past=2, prefix=(5, 3)),
        RowStep(slot=3, tokens=[13], past=9, prefix=(0, 0)),  # no prefix; slot 2 rides along
        RowStep(slot=4, tokens=[14, 15, 16], past=4, prefix=(5, 3)),  # prefills 3 tokens
    ]
    plan = make_plan(rows, cache)
    for r in rows:  # what earlier steps cached, and this step's own keys/values
        n = r.past + len(r.tokens)
        cache.keys[0, r.slot, :, :n] = torch.randn(KV, n, DIM, dtype=dtype)
        cache.values[0, r.slot, :, :n] = torch.randn(KV, n, DIM, dtype=dtype)
    q = torch.randn(len(plan.tokens), KV * GROUP, DIM, dtype=dtype)
    out = cache.attend(0, q, plan, DIM**-0.5)

    start = 0
    for r in rows:
        t, (p0, plen) = len(r.tokens), r.prefix
        n = r.past + t
        keys = torch.cat([cache.bank_keys[0, :, p0 : p0 + plen], cache.keys[0, r.slot, :, :n]], 1)
        values = torch.cat(
            [cache.bank_values[0, :, p0 : p0 + plen], cache.values[0, r.slot, :, :n]], 1
        )
        expected = _reference(
            q[start : start + t].float(), keys.float(), values.float(), plen + r.past
        )
        got = out[start : start + t].float()
        tolerance = 1e-5 if dtype == torch.float32 else 2e-2
        assert torch.allclose(got, expected, atol=tolerance), (r, (got - expected).abs().max())
        start += t
