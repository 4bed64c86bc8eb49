"""Memory and time of one GRPO update on the default student, by micro-batch size and precision.

Each variant runs in a fresh process (so that its peak resident set is its own): the default
student (SmolLM2-135M, full fine-tune, AdamW) takes one update over ``--sequences`` sampled
sequences of ``--length`` tokens (the last quarter the model's own), as the RL stage's
update does. The baseline is micro-batches of 4 whole sequences (what ``micro_batch: 4`` did),
measured in the same run.

Run: python bench/rl_memory.py [--sequences 24] [--length 1500]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = {  # name: (micro_batch_tokens, a multiple of --length or absolute; bf16; checkpointing)
    "4 sequences, fp32 (before)": ("x4", False, False),
    "4096 tokens, fp32": (4096, False, False),
    "4096 tokens, bf16 autocast": (4096, True, False),
    "2048 tokens, bf16 autocast": (2048, True, False),
    "4096 tokens, bf16, checkpointed": (4096, True, True),
}


def one(budget: int, bf16: bool, ckpt: bool, sequences: int, length: int) -> dict[str, float]:
    """One update in this process; its wall time and this process's peak RSS."""
    import torch
    from accelerate import Accelerator

    from trajgym.train.masks import Sampled
    from trajgym.train.rl import RLConfig, _update

    torch.manual_seed(0)
    config = RLConfig(lora=False, micro_batch_tokens=budget, bf16=bf16, gradient_checkpointing=ckpt)
    from trajgym.train.common import prepare_model

    accelerator = Accelerator(mixed_precision="bf16" if bf16 else "no")
    model, _ = prepare_model(config, "cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    own = length // 4
    batch = []
    for i in range(sequences):
        ids = torch.randint(0, 49_000, (length,), generator=torch.Generator().manual_seed(i))
        mask = [0] * (length - own) + [1] * own
        batch.append((Sampled(ids.tolist(), mask, [-1.0] * length), 1.0 if i % 2 else -1.0))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    started = time.perf_counter()
    _update(model, optimizer, accelerator, batch, config, None)
    return {
        "update_s": round(time.perf_counter() - started, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "before_update_gb": round(before, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sequences", type=int, default=24)
    parser.add_argument("--length", type=int, default=1500)
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # budget bf16 ckpt: a child's
    args = parser.parse_args()
    if args.one:
        budget, bf16, ckpt = int(args.one[0]), args.one[1] == "1", args.one[2] == "1"
        print(json.dumps(one(budget, bf16, ckpt, args.sequences, args.length)))
        return
    results = {}
    for name, (budget, bf16, ckpt) in VARIANTS.items():
        tokens = 4 * args.length if budget == "x4" else budget
        argv = [sys.executable, __file__, "--sequences", str(args.sequences)]
        argv += ["--length", str(args.length), "--one", str(tokens), str(int(bf16)), str(int(ckpt))]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        print(f"{name:30s} {results[name]}", flush=True)
    base = results["4 sequences, fp32 (before)"]
    for name, r in results.items():
        print(
            f"{name:30s} peak RSS {r['peak_rss_gb'] / base['peak_rss_gb']:.2f}x, "
            f"update time {r['update_s'] / base['update_s']:.2f}x the baseline"
        )


if __name__ == "__main__":
    main()
