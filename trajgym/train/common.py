"""What SFT and RL share: the model's config fields, its preparation, checkpoints, curves."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import shutil
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from trajgym.agents.models import (
    BF16_EMULATED,
    DEFAULT_STUDENT,
    bf16_runs_natively,
    load_student,
)
from trajgym.train.tracking import check_trackers


class ModelTraining(BaseModel):
    """The model being trained and how (fields common to every training stage)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_STUDENT, description="HF model path or id; default: SmolLM2-135M.")
    adapter: Path | None = Field(None, description="A peft adapter to start from (trained on).")
    lora: bool = Field(True, description="Train a LoRA adapter (False: full fine-tune).")
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator.")
    lora_targets: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that get adapters.",
    )
    seed: int = Field(0, description="Shuffling, sampling and initialisation seed.")
    bf16: bool = Field(
        False,
        description="bf16 autocast where the machine runs bf16 natively (a GPU, or a CPU with "
        "avx512_bf16 or AMX); elsewhere the run warns and trains in fp32.",
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory.")
    shared_prefix: bool = Field(
        True,
        description="Compute a micro-batch's common token prefix (system turn, tool schemas) "
        "once and nothing after a row's last loss token: the same gradients, less compute. "
        "False: every row's full forward pass.",
    )
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps (0: only at the end).")
    report_to: list[str] = Field(
        [],
        description="Experiment trackers that get the run's config and per-step curves, through "
        "accelerate (e.g. tensorboard, trackio, wandb; its package must be installed). Files go "
        "under output_dir/tracking. Empty: none.",
    )

    @field_validator("report_to")
    @classmethod
    def _known_and_installed(cls, names: list[str]) -> list[str]:
        return check_trackers(names)


class TrainedModel(BaseModel):
    """A trained student as an agent loads it: a model, and the adapter on top, if any."""

    model_config = ConfigDict(frozen=True)

    student: str = Field(description="HF model path or id.")
    adapter: str | None = Field(None, description="peft adapter folder on top of it.")

    @property
    def folder(self) -> Path:
        """The folder the training run wrote (the adapter's, or the whole model's)."""
        return Path(self.adapter or self.student)


def trained_model(config: ModelTraining, output_dir: Path) -> TrainedModel:
    """Where a training run puts its model: the one answer, for SFT, RL and evaluation.

    A run that trains an adapter (``lora``, or starting from one) writes ``adapter/`` on top
    of its base model; a full fine-tune writes the whole model to ``model/``.
    """
    if config.lora or config.adapter is not None:
        return TrainedModel(student=config.model, adapter=str(output_dir / "adapter"))
    return TrainedModel(student=str(output_dir / "model"))


class TrainingRun(ModelTraining):
    """A training run of its own: a stage's settings plus the folder it writes."""

    output_dir: Path = Field(Path("runs/train"), description="Checkpoints, model, curves, config.")

    def trained(self) -> TrainedModel:
        """Where this run puts its model."""
        return trained_model(self, self.output_dir)


def prepare_model(config: ModelTraining, device: str) -> tuple[Any, Any]:
    """The model to train (a peft model when training an adapter) and its tokenizer."""
    model, tokenizer = load_student(config.model, device=device)
    model.train()
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable()  # transformers 5 name; the old one is deprecated
    if config.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(config.adapter), is_trainable=True)
    elif config.lora:
        model = with_lora(model, config.lora_r, config.lora_alpha, config.lora_targets)
    return model, tokenizer


def with_lora(model: Any, rank: int, alpha: int, targets: Sequence[str]) -> Any:
    """`model` wrapped in a fresh LoRA adapter (no dropout: training stays deterministic)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(targets),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def save_checkpoint(out: Path, accelerator: Any, state: dict[str, Any]) -> None:
    """Model, optimizer, scheduler and RNG state, plus where the loop was.

    Written beside the last checkpoint and swapped in by renames, so that a process killed
    at any moment leaves a whole checkpoint (the new one or the previous) and never a mix.
    """
    final, staging, previous = _checkpoint_folders(out)
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    if accelerator.is_main_process:
        (staging / "trainer_state.json").write_text(json.dumps(state))
        shutil.rmtree(previous, ignore_errors=True)
        if final.exists():
            final.rename(previous)
        staging.rename(final)
        shutil.rmtree(previous, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(out: Path, accelerator: Any, fresh: dict[str, Any]) -> dict[str, Any]:
    """The loop state saved in ``out`` (restoring model and optimizer), else ``fresh``."""
    final, _, previous = _checkpoint_folders(out)
    for folder in (final, previous):  # previous: killed between the two renames
        if (folder / "trainer_state.json").exists():
            accelerator.load_state(str(folder))
            return dict(json.loads((folder / "trainer_state.json").read_text()))
    return fresh


def _checkpoint_folders(out: Path) -> tuple[Path, Path, Path]:
    return out / "checkpoint", out / "checkpoint.partial", out / "checkpoint.previous"


def step_progress(stage: str, field: str, enabled: bool) -> Progress:
    """A progress bar over optimizer steps that also shows one running figure (``field``)."""
    return Progress(
        TextColumn(f"[bold]{stage}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{field} {{task.fields[{field}]}}"),
        TimeElapsedColumn(),
        disable=not enabled,
    )


def save_final(
    accelerator: Any, model: Any, tokenizer: Any, out: Path, final: Path, summary: Mapping[str, Any]
) -> None:
    """Write the trained model to ``final`` and the run's summary (on the main process only)."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(final)
        tokenizer.save_pretrained(final)
        (out / "summary.json").write_text(json.dumps(summary, indent=1))


def new_accelerator(bf16: bool, **kwargs: Any) -> Any:
    """An ``Accelerator`` for one training run, whatever precision an earlier run used.

    accelerate keeps its state per process and refuses a second precision; a process that
    trains twice (a pipeline, a comparison, a test suite) starts each run from a fresh state.
    The process group (``PartialState``) is kept. bf16 on a machine that only emulates it
    falls back to fp32 (``accelerator.mixed_precision`` says which ran).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if bf16 and not bf16_runs_natively():
        warnings.warn(
            f"bf16 autocast was asked for, but {BF16_EMULATED}: this run trains in fp32.",
            RuntimeWarning,
            stacklevel=2,
        )
        bf16 = False
    AcceleratorState._reset_state()
    return Accelerator(mixed_precision="bf16" if bf16 else "no", **kwargs)


def release_freed_memory() -> None:
    """Hand memory that was freed back to the OS.

    glibc keeps freed heap pages (and one arena per thread) for reuse, so what an update or a
    batch of rollouts allocated would stay resident through the next stage; trimming returns it.
    """
    gc.collect()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def plot_curves(curves: dict[str, list[float]], path: Path, title: str) -> None:
    """One small panel per curve, against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items(), strict=True):
        ax.plot(range(1, len(values) + 1), values)
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
