"""SFT throughput: trajgym's trainer vs TRL's ``SFTTrainer``, same model, data and settings.

Both fine-tune the default student (SmolLM2-135M, fp32 on the CPU, full fine-tune, AdamW,
same learning rate, batch and steps) on the same RetailLite expert conversations rendered with
the same chat template, with the loss on the assistant's tokens only (TRL:
``assistant_only_loss`` through the template's generation markers). TRL runs with bf16 and
gradient checkpointing off: its CPU defaults are several times slower and not a fair baseline.
Tokens/s counts the conversations' real (non-padding) tokens over each training loop.
Target: trajgym >= 1.3x TRL.

Run: python bench/sft.py [--conversations 32] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conversations", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    steps = args.conversations // args.batch
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    store = work / "demos.jsonl"
    generate(
        GenerateConfig(envs=["trajgym/RetailLite-v0"], num_tasks=args.conversations, output=store),
        show_progress=False,
    )
    ours = train(
        SFTConfig(
            data=[store],
            model=DEFAULT_STUDENT,
            output_dir=work / "trajgym",
            lora=False,
            lr=1e-5,
            schedule="constant",
            warmup_ratio=0.0,
            batch_size=args.batch,
            max_optimizer_steps=steps,
            max_length=2048,
        )
    )
    tokens = ours["tokens"]
    trl_s = run_trl(store, work, args.batch, steps)
    ours_rate, trl_rate = tokens / ours["loop_s"], tokens / trl_s
    print(
        f"{args.conversations} conversations, {tokens} tokens, batch {args.batch}, "
        f"{steps} steps, {torch.get_num_threads()} threads"
    )
    print(
        f"trajgym {ours_rate:.1f} tokens/s; TRL SFTTrainer {trl_rate:.1f} tokens/s; ratio "
        f"{ours_rate / trl_rate:.2f}x (target >= 1.3x: "
        f"{'met' if ours_rate / trl_rate >= 1.3 else 'MISSED'})"
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
