"""GRPO's arithmetic: episode rewards, group-relative advantages, the clipped surrogate loss.

Kept apart from the training loop (``train/rl.py``) so that each reads on its own: nothing
here touches environments, checkpoints or processes.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

from trajgym.agents.replies import Generated
from trajgym.records.schema import Trajectory
from trajgym.train.evaluate import invalid_tool_calls, tool_calls
from trajgym.train.masks import Sampled
from trajgym.train.prefix import Plan, kept_logits, plan


class LossSettings(Protocol):
    """What the loss reads of an RL config."""

    clip_eps: float
    kl_coef: float
    temperature: float
    shared_prefix: bool


class RewardWeights(BaseModel):
    """How an episode's reward is made up (weights of each part)."""

    model_config = ConfigDict(extra="forbid")

    success: float = Field(1.0, description="The environment's verified reward (0 or 1).")
    valid_tool_calls: float = Field(
        0.0, description="Share of the episode's tool calls the toolkit could run (0 if none)."
    )
    brevity: float = Field(
        0.0, description="Minus the mean reply length as a share of max_new_tokens."
    )


@dataclass(frozen=True)
class Episode:
    """One rollout: the recorded trajectory and the student's generations, turn by turn."""

    group: int
    trajectory: Trajectory
    turns: tuple[Generated, ...]


def episode_reward(episode: Episode, weights: RewardWeights, max_new_tokens: int) -> float:
    """The weighted sum of the episode's verified success and any shaping."""
    t = episode.trajectory
    reward = weights.success * (t.reward or 0.0)
    if weights.valid_tool_calls:
        calls = tool_calls(t)
        reward += weights.valid_tool_calls * (
            (calls - invalid_tool_calls(t)) / calls if calls else 0.0
        )
    if weights.brevity and episode.turns:
        mean_length = statistics.fmean(len(g.token_ids) for g in episode.turns)
        reward -= weights.brevity * mean_length / max_new_tokens
    return reward


def group_advantages(groups: Sequence[int], rewards: Sequence[float], scale: bool) -> list[float]:
    """Each reward minus its group's mean (divided by the group's std when ``scale``).

    A group whose episodes all scored the same teaches nothing: its advantages are 0.
    """
    by_group: dict[int, list[float]] = {}
    for g, r in zip(groups, rewards, strict=True):
        by_group.setdefault(g, []).append(r)
    stats = {g: (statistics.fmean(rs), statistics.pstdev(rs)) for g, rs in by_group.items()}
    advantages = []
    for g, r in zip(groups, rewards, strict=True):
        mean, std = stats[g]
        advantages.append((r - mean) / (std + 1e-4) if scale else r - mean)
    return advantages


Advantage = float | Sequence[float]  # one per episode, or one per token (distillation)


def policy_loss(
    model: Any,
    batch: Sequence[tuple[Sampled, Advantage]],
    config: LossSettings,
    reference: Reference | None,
    token_count: int,
) -> tuple[Any, dict[str, float]]:
    """Clipped policy-gradient loss over the model's own tokens of ``batch``.

    An advantage is the episode's (every token of the sequence gets it) or a list aligned with
    the sequence's tokens (on-policy distillation's per-token reverse KL).

    Summed over the batch's tokens and divided by ``token_count`` (the tokens of the whole
    step), so that micro-batches add up to a token-level mean. The vocabulary projection runs
    only where a sampled token is predicted; with ``shared_prefix`` the rows' common prefix
    is computed once (``train/prefix.py``), by the policy and by the reference.
    """
    import torch

    inputs = _pad(batch, model)
    ids, attention = inputs["input_ids"], inputs["attention_mask"]
    targets = ids[:, 1:]
    mask = inputs["mask"][:, 1:].bool()
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, :-1] = mask
    planned = plan(ids, attention, keep) if config.shared_prefix else None
    logits = kept_logits(model, ids, attention, keep, config.shared_prefix, planned)
    logp = _chosen_logprobs(logits, targets[mask], config.temperature)
    old = inputs["old"][:, 1:][mask]
    advantage = inputs["advantage"][:, 1:][mask]
    ratio = torch.exp(logp - old)
    clipped = torch.clamp(ratio, 1 - config.clip_eps, 1 + config.clip_eps)
    per_token = -torch.minimum(ratio * advantage, clipped * advantage)
    kl = torch.zeros_like(per_token)
    if reference is not None:
        if reference.same_as_policy:  # its pass would compute these very log-probs
            ref = logp.detach()
        else:
            with torch.no_grad():
                ref_logits = reference.logits(ids, attention, keep, config.shared_prefix, planned)
                ref = _chosen_logprobs(ref_logits, targets[mask], config.temperature)
        kl = torch.exp(ref - logp) - (ref - logp) - 1  # k3: unbiased, always >= 0
        per_token = per_token + config.kl_coef * kl
    loss = per_token.sum() / token_count
    stats = {
        "kl": float(kl.detach().sum()),
        "clipped": float(((ratio - clipped).abs() > 1e-6).sum()),
    }
    return loss, stats


def _chosen_logprobs(logits: Any, chosen: Any, temperature: float) -> Any:
    """Each position's log-probability of its chosen token, at the sampling temperature."""
    import torch

    logp = torch.log_softmax(logits.float() / temperature, -1)
    return logp.gather(-1, chosen[:, None]).squeeze(-1)


def _pad(batch: Sequence[tuple[Sampled, Advantage]], model: Any) -> dict[str, Any]:
    import torch

    width = max(len(s.input_ids) for s, _ in batch)
    rows = len(batch)
    out = {
        "input_ids": torch.zeros((rows, width), dtype=torch.long),
        "attention_mask": torch.zeros((rows, width), dtype=torch.long),
        "mask": torch.zeros((rows, width), dtype=torch.long),
        "old": torch.zeros((rows, width)),
        "advantage": torch.zeros((rows, width)),
    }
    for i, (s, a) in enumerate(batch):
        n = len(s.input_ids)
        out["input_ids"][i, :n] = torch.tensor(s.input_ids)
        out["attention_mask"][i, :n] = 1
        out["mask"][i, :n] = torch.tensor(s.assistant_mask)
        out["old"][i, :n] = torch.tensor(s.old_logprobs)
        out["advantage"][i, :n] = torch.tensor(a) if isinstance(a, Sequence) else a
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in out.items()}


class Reference:
    """The frozen policy the KL is measured against: the adapter switched off, or a copy.

    ``same_as_policy`` says the policy still computes exactly what the reference does (a run
    that starts from the reference's weights, before its first optimizer step: a fresh LoRA
    adapter adds zero, a full fine-tune's copy is the policy). While it holds, the KL is 0
    and the reference pass is skipped; :meth:`policy_changed` ends it.
    """

    def __init__(self, model: Any) -> None:
        if hasattr(model, "disable_adapter"):
            self.model = model
            trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            self.same_as_policy = all("lora_" in n for n, _ in trained) and all(
                not p.detach().any() for n, p in trained if "lora_B" in n
            )
            return
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.same_as_policy = True

    def policy_changed(self) -> None:
        """The policy took an optimizer step (or was restored from one): compute from now on."""
        self.same_as_policy = False

    def logits(
        self, input_ids: Any, attention_mask: Any, keep: Any, shared: bool, planned: Plan | None
    ) -> Any:
        """The reference's logits where ``keep`` holds (as :func:`prefix.kept_logits`)."""
        if hasattr(self.model, "disable_adapter"):
            with self.model.disable_adapter():
                return kept_logits(self.model, input_ids, attention_mask, keep, shared, planned)
        return kept_logits(self.model, input_ids, attention_mask, keep, shared, planned)
