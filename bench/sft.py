"""SFT throughput: trajgym's trainer vs TRL's ``SFTTrainer``, same model, data and settings.

Both fine-tune the default student (SmolLM2-135M, fp32 on the CPU, full fine-tune, AdamW,
same learning rate, batch and steps) on the same RetailLite expert conversations rendered with
the same chat template, with the loss on the assistant's tokens only (TRL:
``assistant_only_loss`` through the template's generation markers). TRL runs with bf16 and
gradient checkpointing off: its CPU defaults are several times slower and not a fair baseline.
Tokens/s counts the conversations' real (non-padding) tokens over each training loop.
Each variant (trajgym fp32, trajgym bf16 autocast, trajgym bf16 with gradient checkpointing,
TRL fp32) runs in its own process, so that its peak resident set is its own; the ratios are of
runs measured together. Target: trajgym >= 1.3x TRL.

Run: python bench/sft.py [--conversations 32] [--batch 4] [--variants fp32,bf16,ckpt,trl]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import datasets
import torch

from trajgym.agents.models import DEFAULT_STUDENT, load_student
from trajgym.rollouts.config import GenerateConfig
from trajgym.rollouts.generate import generate
from trajgym.train.export import ExportFilter, export
from trajgym.train.sft import SFTConfig, train

VARIANTS = ("fp32", "bf16", "ckpt", "trl")  # ckpt: bf16 autocast + gradient checkpointing


def ours(store: Path, work: Path, batch: int, steps: int, variant: str) -> dict[str, float]:
    """trajgym's SFT loop over the conversations: its tokens and seconds."""
    summary = train(
        SFTConfig(
            data=[store],
            model=DEFAULT_STUDENT,
            output_dir=work / f"trajgym-{variant}",
            lora=False,
            lr=1e-5,
            schedule="constant",
            warmup_ratio=0.0,
            batch_size=batch,
            max_optimizer_steps=steps,
            max_length=2048,
            bf16=variant != "fp32",
            gradient_checkpointing=variant == "ckpt",
        )
    )
    return {"tokens": summary["tokens"], "loop_s": summary["loop_s"]}


def child(variant: str, conversations: int, batch: int) -> dict[str, float]:
    """One variant in this process (so that the peak resident set is its own)."""
    steps = conversations // batch
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    store = work / "demos.jsonl"
    generate(
        GenerateConfig(envs=["trajgym/RetailLite-v0"], num_tasks=conversations, output=store),
        show_progress=False,
    )
    result = (
        {"loop_s": run_trl(store, work, batch, steps)}
        if variant == "trl"
        else ours(store, work, batch, steps, variant)
    )
    return result | {"peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child's variant
    args = parser.parse_args()
    variants = args.variants.split(",")
    if "fp32" not in variants or not set(variants) <= set(VARIANTS):
        parser.error(f"--variants: fp32 (the baseline) and any of {', '.join(VARIANTS[1:])}")
    if args.one:
        print(json.dumps(child(args.one, args.conversations, args.batch)))
        return
    runs = {}
    for variant in variants:
        argv = [sys.executable, __file__, "--one", variant]
        argv += ["--conversations", str(args.conversations), "--batch", str(args.batch)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        runs[variant] = json.loads(out.strip().splitlines()[-1])
    tokens = runs["fp32"]["tokens"]  # the same conversations in every variant
    rate = {v: tokens / r["loop_s"] for v, r in runs.items()}
    print(
        f"{args.conversations} conversations, {tokens} tokens, batch {args.batch}, "
        f"{torch.get_num_threads()} threads"
    )
    for v, r in runs.items():
        print(f"{v:5s} {rate[v]:7.1f} tokens/s   peak RSS {r['peak_rss_gb']:.2f} GB")
    for v in set(variants) - {"fp32", "trl"}:
        print(
            f"{v} / fp32: {rate[v] / rate['fp32']:.2f}x tokens/s, "
            f"{runs[v]['peak_rss_gb'] / runs['fp32']['peak_rss_gb']:.2f}x peak RSS"
        )
    if "trl" not in runs:
        return
    best = max(r for v, r in rate.items() if v != "trl")
    print(
        f"trajgym fp32 / TRL SFTTrainer (fp32): {rate['fp32'] / rate['trl']:.2f}x; "
        f"best trajgym / TRL: {best / rate['trl']:.2f}x (target >= 1.3x: "
        f"{'met' if best / rate['trl'] >= 1.3 else 'MISSED'})"
    )


def run_trl(store: Path, work: Path, batch: int, steps: int) -> float:
    """Seconds TRL's training loop takes for the same conversations (model loaded first)."""
    from trl import SFTConfig as TRLConfig
    from trl import SFTTrainer

    export([store], work / "hf", "hf", ExportFilter(min_reward=1.0, splits=["train"]))
    dataset = datasets.load_dataset(str(work / "hf"), split="train")
    dataset = dataset.map(lambda row: {"tools": json.loads(row["tools"])})
    dataset = dataset.map(
        lambda row: {
            "messages": [{k: v for k, v in m.items() if v is not None} for m in row["messages"]]
        }
    )
    model, tokenizer = load_student()
    model.train()
    config = TRLConfig(
        output_dir=str(work / "trl"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=1e-5,
        lr_scheduler_type="constant",
        max_length=2048,
        assistant_only_loss=True,
        bf16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=steps,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer
    )
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
