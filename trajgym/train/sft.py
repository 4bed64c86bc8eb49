"""Supervised fine-tuning on trajectories, with loss on the assistant's tokens only.

Reads top to bottom: config, data (trajectories -> masked token sequences -> length-bucketed
batches), model (LoRA or full), the loop (accelerate, gradient accumulation, schedule),
checkpoints (resumable), and the outputs (peft adapter or full model, loss curve, config).
Runs on a CPU as is, and under ``accelerate launch`` on several GPUs or machines.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypedDict

from pydantic import Field

from trajgym.config import save_config
from trajgym.errors import ConfigError
from trajgym.records.schema import Message
from trajgym.records.store import read_trajectories, require_input
from trajgym.train.common import (
    ModelTraining,
    TrainingRun,
    load_checkpoint,
    new_accelerator,
    plot_curves,
    prepare_model,
    release_freed_memory,
    save_checkpoint,
    save_final,
    step_progress,
)
from trajgym.train.distill import LogitDistillation, load_frozen_teacher, top_k_kl
from trajgym.train.masks import IGNORE_INDEX, tokenize_with_masks
from trajgym.train.prefix import kept_logits, plan
from trajgym.train.tracking import accelerator_arguments, finish_trackers, start_trackers


class SFTSettings(ModelTraining):
    """How to fine-tune: everything of an SFT run but its data and its folder."""

    min_reward: float | None = Field(1.0, description="Train only on rewards >= this (None: all).")
    lr: float = Field(2e-4, gt=0, description="Peak learning rate.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR decay.")
    warmup_ratio: float = Field(0.05, ge=0, le=1, description="Share of steps warming up.")
    epochs: int = Field(1, ge=1, description="Passes over the data.")
    max_optimizer_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps."
    )
    batch_size: int = Field(4, ge=1, description="Sequences per micro-batch.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_length: int = Field(4096, ge=16, description="Longer sequences are truncated.")
    bucket_by_length: bool = Field(True, description="Batch sequences of similar length.")
    distill: LogitDistillation | None = Field(
        None,
        description="Logit distillation: also match a white-box teacher's next-token "
        "distributions at the assistant tokens (KL on its top-k, mixed with cross-entropy).",
    )


class SFTConfig(SFTSettings, TrainingRun):
    """An SFT run."""

    data: list[Path] = Field(description="Trajectory JSONL files.")
    output_dir: Path = Field(Path("runs/sft"), description="Checkpoints, adapter, curve, config.")


class SFTSummary(TypedDict):
    """What an SFT run did (also ``summary.json`` in its folder)."""

    steps: int
    tokens: int
    loss_tokens: int
    examples: int
    losses: list[float]
    final: str
    loop_s: float
    loop_cpu_s: float  # the process's CPU time in the loop: steadier than wall on a busy machine
    tokens_per_s: float | None
    precision: str  # what ran: "bf16" or "no" (fp32), whatever the config asked


# Data ---------------------------------------------------------------------------------------


def load_examples(config: SFTConfig, tokenizer: Any) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) for every kept trajectory; labels are IGNORE_INDEX off the assistant.

    A trajectory with teacher labels (on-policy distillation) trains on the teacher's actions
    at the student's states, whatever the student's own reward was.
    """
    from trajgym.rollouts.onpolicy import training_conversations

    examples = []
    for path in config.data:
        # A store's order is the order episodes finished in: sorted, the same data gives
        # the same batches (and the same student) however the harvest's threads raced.
        for t in sorted(read_trajectories(path), key=lambda t: t.key):
            if t.status != "ok":
                continue
            conversations: list[tuple[list[Message], set[int] | None]]
            if t.labels:
                conversations = list(training_conversations(t))
            elif config.min_reward is None or (t.reward or 0) >= config.min_reward:
                conversations = [(list(t.messages), None)]
            else:
                continue
            for messages, trained in conversations:
                tokenized = tokenize_with_masks(
                    tokenizer,
                    [m.to_openai() for m in messages],
                    t.tools,
                    config.max_length,
                    trained,
                )
                if any(tokenized.assistant_mask):
                    examples.append((tokenized.input_ids, tokenized.labels))
    if not examples:
        raise ConfigError(f"No trajectories to train on in {config.data} (after min_reward).")
    return examples


def batches(
    examples: list[tuple[list[int], list[int]]],
    config: SFTConfig,
    epoch: int,
    pad_id: int,
    rank: int = 0,
    world: int = 1,
) -> Iterator[dict[str, Any]]:
    """This process's micro-batches for one epoch; similar lengths batched together."""
    import torch

    rng = random.Random(config.seed + epoch)
    order = list(range(len(examples)))
    rng.shuffle(order)
    if config.bucket_by_length:  # sort within windows of 16 batches, then shuffle the batches
        window = config.batch_size * 16
        order = [
            i
            for w in range(0, len(order), window)
            for i in sorted(order[w : w + window], key=lambda i: len(examples[i][0]))
        ]
    groups = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
    rng.shuffle(groups)
    for group in groups[rank::world]:  # each process trains on its own share
        width = max(len(examples[i][0]) for i in group)
        ids = torch.full((len(group), width), pad_id)
        labels = torch.full((len(group), width), IGNORE_INDEX)
        attention = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            x, y = examples[i]
            ids[row, : len(x)] = torch.tensor(x)
            labels[row, : len(y)] = torch.tensor(y)
            attention[row, : len(x)] = 1
        yield {"input_ids": ids, "labels": labels, "attention_mask": attention}


# Training -----------------------------------------------------------------------------------


def train(config: SFTConfig) -> SFTSummary:
    """Run SFT; returns a summary (also written to output_dir/summary.json)."""
    import torch
    from transformers import get_scheduler

    for path in config.data:  # a missing or empty file is a mistake, found before any write
        require_input(path)
    torch.manual_seed(config.seed)
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    accelerator = new_accelerator(
        config.bf16,
        gradient_accumulation_steps=config.grad_accum,
        **accelerator_arguments(config.report_to, out),
    )
    model, tokenizer = prepare_model(config, str(accelerator.device))
    examples = load_examples(config, tokenizer)
    teacher = None
    if config.distill is not None:
        d = config.distill
        teacher = load_frozen_teacher(
            d.teacher, d.adapter, d.dtype, tokenizer, str(accelerator.device)
        )
    world, rank = accelerator.num_processes, accelerator.process_index
    micro_per_epoch = math.ceil(len(examples) / config.batch_size / world)
    per_epoch = math.ceil(micro_per_epoch / config.grad_accum)
    total = config.max_optimizer_steps or per_epoch * config.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    scheduler = get_scheduler(config.schedule, optimizer, int(config.warmup_ratio * total), total)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    fresh = {"step": 0, "tokens": 0, "loss_tokens": 0, "losses": [], "micro": 0}
    state = load_checkpoint(out, accelerator, fresh)
    start_trackers(accelerator, config, "sft", state["step"])
    loop_started, tokens_before = time.perf_counter(), state["tokens"]
    cpu_started = time.process_time()
    losses: list[float] = state["losses"]
    step, tokens, loss_tokens = state["step"], state["tokens"], state.get("loss_tokens", 0)
    pad = tokenizer.pad_token_id
    progress = step_progress("sft", "loss", accelerator.is_main_process)
    with progress:
        bar = progress.add_task("steps", total=total, completed=step, loss="-")
        for epoch in itertools.count():  # max_optimizer_steps may ask for more than `epochs`
            if step >= total:
                break
            micro_losses: list[float] = []
            for micro, batch in enumerate(batches(examples, config, epoch, pad, rank, world)):
                if step >= total:
                    break
                seen = epoch * micro_per_epoch + micro
                if seen < state["micro"]:
                    continue  # already trained on before the checkpoint
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                with accelerator.accumulate(model):
                    with accelerator.autocast() if teacher else contextlib.nullcontext():
                        loss = assistant_loss(
                            model, batch, teacher, config.distill, config.shared_prefix
                        )
                    accelerator.backward(loss)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                micro_losses.append(float(loss.detach()))
                # Each batch shape's activations, freed, would otherwise stay in the heap:
                # the main job's resident set climbed 4.0 -> 7.9 GB over its 120 steps.
                release_freed_memory()
                tokens += int(batch["attention_mask"].sum())
                loss_tokens += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                if accelerator.sync_gradients:
                    step += 1
                    losses.append(sum(micro_losses) / len(micro_losses))
                    micro_losses = []
                    state.update(step=step, tokens=tokens, loss_tokens=loss_tokens)
                    state.update(losses=losses, micro=seen + 1)
                    progress.update(bar, completed=step, loss=f"{losses[-1]:.3f}")
                    lr = scheduler.get_last_lr()[0]
                    accelerator.log({"loss": losses[-1], "lr": lr, "tokens": tokens}, step=step)
                    if config.save_every and step % config.save_every == 0:
                        save_checkpoint(out, accelerator, state)
    loop_s = time.perf_counter() - loop_started
    loop_cpu_s = time.process_time() - cpu_started
    save_checkpoint(out, accelerator, state)
    final = config.trained().folder
    if accelerator.is_main_process:
        plot_curves({"loss (assistant tokens)": losses}, out / "loss.png", "SFT")
    summary: SFTSummary = {
        "steps": step,
        "tokens": tokens,
        "loss_tokens": loss_tokens,  # the assistant's tokens trained on (and a teacher scored)
        "examples": len(examples),
        "losses": losses,
        "final": str(final),
        "loop_s": round(loop_s, 3),
        "loop_cpu_s": round(loop_cpu_s, 3),
        "tokens_per_s": round((tokens - tokens_before) / loop_s, 2) if loop_s else None,
        "precision": str(accelerator.mixed_precision),
    }
    save_final(accelerator, model, tokenizer, out, final, summary)
    finish_trackers(accelerator)
    # The accelerator holds the model and optimizer: free them for whatever runs next.
    del model, optimizer, scheduler
    accelerator.free_memory()
    return summary


def assistant_loss(
    model: Any,
    batch: dict[str, Any],
    teacher: Any = None,
    distill: LogitDistillation | None = None,
    shared_prefix: bool = True,
) -> Any:
    """Mean next-token loss over the labelled (assistant) tokens.

    The vocabulary projection runs only at the positions that predict a labelled token:
    system, user and tool tokens never carry loss, so their logits are never computed. With a
    teacher, the loss mixes in the KL from its next-token distributions at those positions.
    With ``shared_prefix`` the rows' common prefix is computed once, by the student and by the
    teacher (``train/prefix.py``), and nothing after a row's last labelled token.
    """
    import torch
    import torch.nn.functional as F

    targets = batch["labels"][:, 1:]
    keep = torch.zeros_like(batch["labels"], dtype=torch.bool)
    keep[:, :-1] = targets != IGNORE_INDEX
    ids, attention = batch["input_ids"], batch["attention_mask"]
    planned = plan(ids, attention, keep) if shared_prefix else None
    logits = kept_logits(model, ids, attention, keep, shared_prefix, planned)
    logits = logits.float().reshape(-1, logits.shape[-1])
    cross_entropy = F.cross_entropy(logits, targets[keep[:, :-1]])
    if teacher is None or distill is None:
        return cross_entropy
    with torch.no_grad():
        teacher_logits = kept_logits(teacher, ids, attention, keep, shared_prefix, planned)
    teacher_logits = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    kl = top_k_kl(logits, teacher_logits, distill.top_k)
    return (1 - distill.weight) * cross_entropy + distill.weight * kl
