"""Decode attention at the engine's shapes: one flash call over the longest row, or chunks.

The engine decodes every row of a step in one call of PyTorch's CPU flash kernel over slots
[0, rows), each row attending over the *longest* row's width with a mask (kv_slots.py). A
weak student's evaluation spends ~55% of its engine time there (py-spy, logit_kd@40). Rows
sit in slots by admission, so neighbouring slots have similar lengths: contiguous chunks,
each over its own longest width, read fewer masked keys at the price of more calls. Per-row
calls read no masked key at all. Printed: ms per layer call for each, same keys and queries.

Measured 2026-12-08 (AMD EPYC, 2 cores, avx512_bf16; quiet machine; 32 rows, bf16), ms per
layer call, lengths spread from 64 to the longest:
    longest 512 (mean 312): one call 1.36, 2 chunks 1.33, 4 chunks 1.06, 8 chunks 1.18, row 2.10
    longest 1024 (mean 518): one call 4.02, 2 chunks 2.74, 4 chunks 2.17, 8 chunks 2.21, row 3.09
    longest 2048 (mean 1014): one call 7.17, 2 chunks 4.94, 4 chunks 4.14, 8 chunks 3.92, row 6.73
Four contiguous chunks: 1.3-1.85x the one call the engine makes today (not yet adopted).

Run: python bench/decode_attention.py [--rows 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
KV_HEADS, GROUP, DIM = 3, 3, 64  # SmolLM2-135M: 9 query heads over 3 kv heads, dim 64


def timed(fn: Callable[[], object], repeats: int = 30) -> float:
    """Milliseconds per call, after warm-up."""
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def mask(lengths: list[int], width: int) -> torch.Tensor:
    """Additive (rows, 1, 1, width): each row sees its own first ``length`` positions."""
    m = torch.full((len(lengths), 1, 1, width), float("-inf"), dtype=torch.bfloat16)
    for i, n in enumerate(lengths):
        m[i, ..., :n] = 0
    return m


def attend(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, m: torch.Tensor | None
) -> object:
    """One flash call: queries (rows, kv, group, dim) over the keys' first positions."""
    width = keys.shape[2] if m is None else m.shape[-1]
    k, v = keys[:, :, :width], values[:, :, :width]
    return FLASH(q, k, v, 0.0, False, attn_mask=m, scale=DIM**-0.5)


def variants(
    q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: list[int]
) -> dict[str, float]:
    """Milliseconds per layer call: one call, contiguous chunks, one call per row."""
    rows = len(lengths)
    full = mask(lengths, max(lengths))
    results = {"one call": timed(lambda: attend(q, keys, values, full))}
    for chunks in (2, 4, 8):
        size = rows // chunks
        parts = [(a, a + size) for a in range(0, rows, size)]
        masks = [mask(lengths[a:b], max(lengths[a:b])) for a, b in parts]

        def chunked(
            parts: list[tuple[int, int]] = parts, masks: list[torch.Tensor] = masks
        ) -> None:
            for (a, b), m in zip(parts, masks, strict=True):
                attend(q[a:b], keys[a:b], values[a:b], m)

        results[f"{chunks} chunks"] = timed(chunked)

    def per_row() -> None:
        for i, n in enumerate(lengths):
            attend(q[i : i + 1], keys[i : i + 1, :, :n], values[i : i + 1, :, :n], None)

    results["per row"] = timed(per_row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    keys = torch.randn(args.rows, KV_HEADS, 4096, DIM, dtype=torch.bfloat16)
    values = torch.randn_like(keys)
    q = torch.randn(args.rows, KV_HEADS, GROUP, DIM, dtype=torch.bfloat16)
    for longest in (512, 1024, 2048):
        # Oldest (longest) first, as the engine's slots are; one row at the longest width.
        lengths = sorted(torch.randint(64, longest + 1, (args.rows,)).tolist(), reverse=True)
        lengths[0] = longest
        results = variants(q, keys, values, lengths)
        line = ", ".join(f"{k} {v:.2f} ms" for k, v in results.items())
        print(f"longest {longest}, mean {sum(lengths) / args.rows:.0f}: {line}")


if __name__ == "__main__":
    main()
