"""On-policy distillation's arithmetic: a white-box teacher scores every token the student wrote.

The student samples its own episodes in the environment (the rollouts of ``train/rl.py``);
the teacher reads the same tokens and gives the log-probability of each token the student
chose. The per-token advantage is the negative reverse KL on the sampled token,
``log p_teacher - log p_student``: a token the teacher would also have written costs nothing,
one it would not is pushed down (Agarwal et al. 2024, "On-policy distillation of language
models"; Qwen3's report; Thinking Machines' "On-policy distillation"). The environment's
group-relative reward can be added on top, by a weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from trajgym.agents.models import load_student
from trajgym.agents.remote import RemoteScorer, ServerConfig
from trajgym.errors import ConfigError
from trajgym.rollouts.config import StudentDtype
from trajgym.train.masks import Sampled, token_budget_batches
from trajgym.train.prefix import kept_logits


class TeacherScoring(BaseModel):
    """The white-box teacher of on-policy distillation, and how its scores become advantages."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="HF model path or id; must share the student's tokenizer."
    )
    adapter: Path | None = Field(None, description="A peft adapter on top of the teacher.")
    dtype: StudentDtype = Field("float32", description="The teacher's weights' dtype.")
    server: ServerConfig | None = Field(
        None,
        description="Or a teacher on a vLLM server, scoring with prompt_logprobs (at "
        "temperature 1) instead of a local model.",
    )
    coef: float = Field(
        1.0, ge=0, description="Weight of the per-token advantage log p_teacher - log p_student."
    )
    reward_coef: float = Field(
        0.0, ge=0, description="Weight of the environment's group-relative advantage, added on."
    )
    micro_batch_tokens: int = Field(
        4096, ge=64, description="Padded tokens per teacher forward pass (rows x longest)."
    )

    @model_validator(mode="after")
    def _one_teacher(self) -> TeacherScoring:
        if (self.model is None) == (self.server is None):
            raise ValueError("teacher: give exactly one of model (local) or server (vLLM)")
        return self


def make_teacher(
    config: TeacherScoring, student_tokenizer: Any, device: str, shared_prefix: bool = True
) -> Teacher:
    """The local teacher (``shared_prefix``: see :class:`LocalTeacher`), or one on a server."""
    if config.server is not None:
        return ServerTeacher(config.server, student_tokenizer)
    return LocalTeacher(config, student_tokenizer, device, shared_prefix)


class Teacher(Protocol):
    """Scores the student's tokens of each sequence."""

    def token_logprobs(self, sequences: Sequence[Sampled], temperature: float) -> list[list[float]]:
        """The teacher's log-prob of each token the student wrote, 0 elsewhere."""
        ...


def check_same_tokenizer(student: Any, teacher: Any, teacher_name: str) -> None:
    """Refuse a teacher whose token ids mean other strings than the student's.

    Per-token log-probs compare only if both models read the very same ids.
    """
    if student.get_vocab() != teacher.get_vocab():
        raise ConfigError(
            f"The teacher '{teacher_name}' does not share the student's tokenizer "
            f"({len(teacher.get_vocab())} vs {len(student.get_vocab())} tokens, or other ids): "
            "on-policy distillation scores the student's own token ids. Pick a teacher of the "
            "same family (e.g. a trajgym-trained checkpoint of the student)."
        )


class LocalTeacher:
    """A transformers causal LM (plus adapter) that scores token sequences, frozen.

    With ``shared_prefix`` a micro-batch's common prefix is computed once and nothing after a
    row's last student token (``train/prefix.py``); the scores are the same.
    """

    def __init__(
        self,
        config: TeacherScoring,
        student_tokenizer: Any,
        device: str,
        shared_prefix: bool = True,
    ) -> None:
        if config.model is None:
            raise ConfigError("A local teacher needs teacher.model.")
        self.config = config
        self.shared_prefix = shared_prefix
        self.model = load_frozen_teacher(
            config.model, config.adapter, config.dtype, student_tokenizer, device
        )

    def token_logprobs(self, sequences: Sequence[Sampled], temperature: float) -> list[list[float]]:
        """The teacher's log-prob of each token the student wrote, 0 elsewhere.

        ``lp[i] = log p_teacher(ids[i] | ids[:i])`` where the mask marks token i: aligned
        with ``Sampled.old_logprobs``.
        """
        import torch

        out: list[list[float]] = [[0.0] * len(s.input_ids) for s in sequences]
        indexed = [(s, i) for i, s in enumerate(sequences)]
        device = next(self.model.parameters()).device
        for group in token_budget_batches(indexed, self.config.micro_batch_tokens):
            rows = [i for _, i in group]
            width = max(len(sequences[i].input_ids) for i in rows)
            ids = torch.zeros((len(rows), width), dtype=torch.long)
            attention = torch.zeros_like(ids)
            keep = torch.zeros_like(ids, dtype=torch.bool)  # positions predicting a student token
            for r, i in enumerate(rows):
                n = len(sequences[i].input_ids)
                ids[r, :n] = torch.tensor(sequences[i].input_ids)
                attention[r, :n] = 1
                keep[r, : n - 1] = torch.tensor(sequences[i].assistant_mask[1:], dtype=torch.bool)
            ids, attention, keep = ids.to(device), attention.to(device), keep.to(device)
            with torch.no_grad():
                logits = kept_logits(self.model, ids, attention, keep, self.shared_prefix)
                logp = torch.log_softmax(logits.float() / temperature, -1)
                chosen = logp.gather(-1, ids[:, 1:][keep[:, :-1]][:, None]).squeeze(-1).cpu()
            scored = iter(chosen.tolist())  # row-major, as keep orders them
            for r, i in enumerate(rows):
                for t in torch.nonzero(keep[r]).flatten().tolist():
                    out[i][t + 1] = next(scored)
        return out


PROBE = "<|im_start|>user\nCancel order #W12 please: I ordered it by mistake.<|im_end|>"
"""A text whose token ids must agree between the student and a server teacher."""


class ServerTeacher:
    """A teacher on a vLLM server: one ``prompt_logprobs`` request per sequence."""

    def __init__(self, server: ServerConfig, student_tokenizer: Any) -> None:
        self.scorer = RemoteScorer(server)
        theirs = self.scorer.tokenize(PROBE)
        ours = list(student_tokenizer(PROBE, add_special_tokens=False).input_ids)
        if theirs != ours:
            raise ConfigError(
                f"The teacher served as '{server.model}' does not share the student's tokenizer "
                f"(it reads a probe as {theirs[:8]}..., the student as {ours[:8]}...): "
                "on-policy distillation scores the student's own token ids."
            )

    def token_logprobs(self, sequences: Sequence[Sampled], temperature: float) -> list[list[float]]:
        """As :meth:`LocalTeacher.token_logprobs`; the server scores at temperature 1."""
        if temperature != 1.0:
            raise ConfigError(
                "A server teacher scores at temperature 1 (vLLM's prompt_logprobs); sample the "
                "rollouts at temperature 1 too, or use a local teacher."
            )
        out = []
        for s in sequences:
            scored = self.scorer.token_logprobs(list(s.input_ids))
            out.append(
                [
                    lp if m and lp is not None else 0.0
                    for lp, m in zip(scored, s.assistant_mask, strict=True)
                ]
            )
        return out


def distillation_advantages(
    sampled: Sampled,
    teacher_logprobs: Sequence[float],
    coef: float,
    reward_advantage: float = 0.0,
    reward_coef: float = 0.0,
) -> list[float]:
    """Each token's advantage: the scaled negative reverse KL, plus the reward's share.

    ``coef * (log p_teacher - log p_student) + reward_coef * reward_advantage`` where the
    student wrote the token, 0 elsewhere; ``log p_student`` is the sampling log-prob recorded
    at rollout time (the behaviour policy's).
    """
    return [
        coef * (t - s) + reward_coef * reward_advantage if m else 0.0
        for m, t, s in zip(
            sampled.assistant_mask, teacher_logprobs, sampled.old_logprobs, strict=True
        )
    ]


def reverse_kl_sum(sampled: Sampled, teacher_logprobs: Sequence[float]) -> float:
    """Sum over the student's tokens of ``log p_student - log p_teacher``.

    The sampled estimate of the reverse KL (student || teacher): what distillation drives down.
    """
    return sum(
        s - t
        for m, t, s in zip(
            sampled.assistant_mask, teacher_logprobs, sampled.old_logprobs, strict=True
        )
        if m
    )


# Logit distillation (off-policy, on the teacher's trajectories) ------------------------------


class LogitDistillation(BaseModel):
    """SFT that also matches the teacher's next-token distributions at the assistant tokens."""

    model_config = ConfigDict(extra="forbid")

    teacher: str = Field(description="HF model path or id; must share the student's tokenizer.")
    adapter: Path | None = Field(None, description="A peft adapter on top of the teacher.")
    dtype: StudentDtype = Field("float32", description="The teacher's weights' dtype.")
    top_k: int = Field(
        20,
        ge=1,
        description="The teacher's k most likely tokens, plus one bucket for the rest of the "
        "vocabulary: the KL over these k+1 outcomes (a lower bound of the full KL, exact as k "
        "grows, zero when student and teacher agree).",
    )
    weight: float = Field(
        0.5, ge=0, le=1, description="loss = (1 - weight) * cross-entropy + weight * KL."
    )


def load_frozen_teacher(
    model: str, adapter: Path | None, dtype: str, student_tokenizer: Any, device: str
) -> Any:
    """A teacher model, frozen, after checking it reads the student's token ids."""
    teacher, tokenizer = load_student(model, str(adapter) if adapter else None, dtype, device)
    check_same_tokenizer(student_tokenizer, tokenizer, model)
    if adapter:  # frozen: fold the LoRA deltas in, one matmul per layer instead of three
        teacher = teacher.merge_and_unload()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def top_k_kl(student_logits: Any, teacher_logits: Any, k: int) -> Any:
    """Mean over positions of KL(teacher || student) on the teacher's top k tokens + the rest.

    Both are ``(positions, vocab)``. The rest bucket holds each model's probability outside
    the teacher's top k, so a student that puts its mass elsewhere is penalised too.
    """
    import torch

    log_t = torch.log_softmax(teacher_logits.float(), -1)
    log_s = torch.log_softmax(student_logits.float(), -1)
    top_t, index = log_t.topk(min(k, log_t.shape[-1]), -1)
    top_s = log_s.gather(-1, index)
    rest_t = _log_rest(top_t)
    rest_s = _log_rest(top_s)
    kl = (top_t.exp() * (top_t - top_s)).sum(-1) + rest_t.exp() * (rest_t - rest_s)
    return kl.mean()


def _log_rest(top: Any) -> Any:
    """log(1 - sum(exp(top))): the log-probability outside the top tokens, kept finite."""
    import torch

    covered = torch.logsumexp(top, -1).exp().clamp(max=1 - 1e-6)
    return torch.log1p(-covered)
