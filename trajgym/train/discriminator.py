"""GAD's discriminator: a causal LM backbone with a scalar head, trained to prefer the teacher.

It reads a reply in its state (the conversation before it, rendered with the backbone's chat
template) and gives one number: the head on the hidden state of the reply's last token. It is
trained on pairs of replies written at the same state, the teacher's and the student's, with
the Bradley-Terry loss ``-log sigmoid(D(teacher) - D(student))``; its score of a student
reply is that reply's reward (Ye et al. 2025, "Black-Box On-Policy Distillation of Large
Language Models", arXiv 2511.10643). GAD starts it from the student's base model.

It only ever reads text: the teacher's replies are messages, never log-probabilities, so any
teacher that can answer a conversation (an API model, the scripted expert) will do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trajgym.agents.models import DEFAULT_STUDENT, load_student
from trajgym.errors import ConfigError
from trajgym.records.schema import Message
from trajgym.rollouts.config import StudentDtype
from trajgym.train.common import with_lora


class DiscriminatorConfig(BaseModel):
    """The discriminator's model and how it trains."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        DEFAULT_STUDENT,
        description="The backbone, HF path or id: GAD starts from the student's base model.",
    )
    dtype: StudentDtype = Field("float32", description="The backbone's weights' dtype.")
    lora: bool = Field(True, description="Train a LoRA adapter and the head (False: all weights).")
    lora_r: int = Field(8, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(16, ge=1, description="LoRA scaling numerator.")
    lora_targets: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Module names that get adapters.",
    )
    lr: float = Field(1e-5, gt=0, description="Learning rate (constant, AdamW).")
    warmup_steps: int = Field(
        10,
        ge=0,
        description="Steps on the first batch's pairs before the student's first update, so "
        "that its first rewards come from a discriminator that already knows the teacher.",
    )
    steps_per_update: int = Field(
        1, ge=1, description="Discriminator steps per student update (the alternation)."
    )
    micro_batch: int = Field(8, ge=1, description="Pairs per forward pass (twice the rows).")
    max_length: int = Field(
        2048,
        ge=16,
        description="Tokens of a sequence kept, from its end: the reply and what came last.",
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping.")
    seed: int = Field(0, description="Seeds the head and the adapter's initialisation.")


@dataclass(frozen=True)
class Pair:
    """Two replies at the same state: the teacher's (preferred) and the student's."""

    state: tuple[Message, ...]
    teacher: Message
    student: Message
    tools: tuple[dict[str, Any], ...] = ()


class Discriminator:
    """A scalar score of a reply in its state; higher means more like the teacher.

    ``backbone`` is a transformers causal LM the discriminator owns and trains (with LoRA, an
    adapter is added to it): pass a copy, never the policy itself.
    """

    def __init__(self, backbone: Any, tokenizer: Any, config: DiscriminatorConfig) -> None:
        import torch

        self.config = config
        self.tokenizer = tokenizer
        self.steps = 0
        device = next(backbone.parameters()).device
        rng_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):  # seeded, the caller's RNG untouched
            torch.manual_seed(config.seed)
            if config.lora:
                c = config
                backbone = with_lora(backbone, c.lora_r, c.lora_alpha, c.lora_targets)
            hidden = backbone.config.get_text_config().hidden_size
            self.head = torch.nn.Linear(hidden, 1).to(device)
            torch.nn.init.normal_(self.head.weight, std=hidden**-0.5)
            torch.nn.init.zeros_(self.head.bias)
        self.backbone = backbone
        base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
        self._decoder = base.get_decoder()  # hidden states only: no vocabulary projection
        if not config.lora:
            for p in backbone.parameters():
                p.requires_grad_(True)
        params = [p for p in backbone.parameters() if p.requires_grad]
        params += list(self.head.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)

    @classmethod
    def load(cls, config: DiscriminatorConfig, device: str | None = None) -> Discriminator:
        """A fresh discriminator on ``config.model`` (its own copy, its own tokenizer)."""
        backbone, tokenizer = load_student(config.model, dtype=config.dtype, device=device)
        return cls(backbone, tokenizer, config)

    def score(
        self, state: Sequence[Message], reply: Message, tools: Sequence[dict[str, Any]] = ()
    ) -> float:
        """The score of ``reply`` written after ``state``."""
        return self.scores([(tuple(state), reply, tuple(tools))])[0]

    def scores(
        self, items: Sequence[tuple[tuple[Message, ...], Message, tuple[dict[str, Any], ...]]]
    ) -> list[float]:
        """The scores of many ``(state, reply, tools)``, in micro-batches, without gradients."""
        import torch

        self._mode(training=False)
        out: list[float] = []
        rows = [self.encode(*item) for item in items]
        step = 2 * self.config.micro_batch
        with torch.no_grad():
            for i in range(0, len(rows), step):
                out += self._forward(rows[i : i + step]).tolist()
        return out

    def train_step(self, pairs: Sequence[Pair]) -> dict[str, float]:
        """One optimizer step of the Bradley-Terry loss, the mean over ``pairs``.

        Returns the loss and the accuracy (the share of pairs scored teacher above student)
        as they were before the step. No pairs: no step.
        """
        import torch

        if not pairs:
            return {"loss": 0.0, "accuracy": 0.0, "pairs": 0.0}
        self._mode(training=True)
        loss_sum, correct = 0.0, 0
        size = self.config.micro_batch
        for i in range(0, len(pairs), size):
            chunk = pairs[i : i + size]
            rows = [self.encode(p.state, p.teacher, p.tools) for p in chunk]
            rows += [self.encode(p.state, p.student, p.tools) for p in chunk]
            scores = self._forward(rows)
            margin = scores[: len(chunk)] - scores[len(chunk) :]
            loss = -torch.nn.functional.logsigmoid(margin).sum() / len(pairs)
            loss.backward()
            loss_sum += float(loss.detach()) * len(pairs)
            correct += int((margin.detach() > 0).sum())
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return {
            "loss": loss_sum / len(pairs),
            "accuracy": correct / len(pairs),
            "pairs": len(pairs),
        }

    def encode(
        self, state: Sequence[Message], reply: Message, tools: Sequence[dict[str, Any]] = ()
    ) -> list[int]:
        """The token ids the discriminator reads: the conversation up to and with ``reply``.

        Rendered by the backbone's chat template, without the layout after the reply's
        end-of-turn token, and cut from the left to ``max_length``: the reply's last token,
        whose hidden state is scored, is always kept.
        """
        text = self.tokenizer.apply_chat_template(
            [m.to_openai() for m in (*state, reply)],
            tools=list(tools) or None,
            tokenize=False,
        )
        ids = self.tokenizer(str(text).rstrip(), add_special_tokens=False).input_ids
        return list(ids)[-self.config.max_length :]

    def save(self, folder: Path) -> None:
        """The trained weights, the optimizer and the step count, to ``folder``."""
        import torch

        folder.mkdir(parents=True, exist_ok=True)
        trained = {n: p.detach() for n, p in self.backbone.named_parameters() if p.requires_grad}
        state = {
            "backbone": trained,
            "head": self.head.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
        }
        torch.save(state, folder / "discriminator.pt")

    def restore(self, folder: Path) -> None:
        """Take back what :meth:`save` wrote (a resumed run)."""
        import torch

        device = next(self.backbone.parameters()).device
        state = torch.load(folder / "discriminator.pt", map_location=device)
        loaded = self.backbone.load_state_dict(state["backbone"], strict=False)
        if loaded.unexpected_keys:  # saved from another backbone or adapter layout
            raise ConfigError(
                f"{folder / 'discriminator.pt'} holds weights this discriminator does not have "
                f"({loaded.unexpected_keys[:3]}...): was it saved with another model or lora?"
            )
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = int(state["steps"])

    def _mode(self, training: bool) -> None:
        self.backbone.train(training)
        self.head.train(training)

    def _forward(self, rows: Sequence[list[int]]) -> Any:
        """The head on each row's last hidden state (rows right-padded; float32 scores)."""
        import torch

        device = self.head.weight.device
        width = max(len(r) for r in rows)
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            attention[i, : len(r)] = 1
        ids, attention = ids.to(device), attention.to(device)
        hidden = self._decoder(input_ids=ids, attention_mask=attention).last_hidden_state
        last = hidden[torch.arange(len(rows), device=device), attention.sum(1) - 1]
        return self.head(last.float()).squeeze(-1)
