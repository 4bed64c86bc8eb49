"""Per-turn rewards in GRPO: each of the student's turns gets its own reward and advantage.

An episode's reward (``grpo.episode_reward``) credits every token of the episode alike. A
source that can tell the turns apart (GAD's discriminator, a per-turn judge) gives one reward
per student turn instead: :data:`TurnRewards`. Each turn's reward is made relative to the
other turns of its GRPO group (the group's episodes share a task and a seed), and the turn's
tokens carry that advantage, plus the episode's own advantage where it has one:
:func:`per_turn_batch` builds the sequences to train on, aligned token by token with
``masks.generated_sequences``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from trajgym.train.grpo import Advantage, Episode
from trajgym.train.masks import Generation, Sampled, generated_sequences

TurnRewards = Callable[[Sequence[Episode]], list[list[float]]]
"""Each episode's rewards, one per student turn (in order), [] for an episode not scored."""


def turn_advantages(
    groups: Sequence[int], rewards: Sequence[Sequence[float]], scale: bool
) -> list[list[float]]:
    """Each turn's reward minus the mean over its group's turns (over the std with ``scale``).

    The statistics pool every turn of every episode in the group: turns at different states
    compare as GRPO's sampled responses do. A group whose turns all scored the same gets 0.
    """
    pooled: dict[int, list[float]] = {}
    for g, rs in zip(groups, rewards, strict=True):
        pooled.setdefault(g, []).extend(rs)
    stats = {g: (statistics.fmean(rs), statistics.pstdev(rs)) for g, rs in pooled.items() if rs}
    out: list[list[float]] = []
    for g, rs in zip(groups, rewards, strict=True):
        if not rs:
            out.append([])
            continue
        mean, std = stats[g]
        out.append([(r - mean) / (std + 1e-4) if scale else r - mean for r in rs])
    return out


def token_advantages(
    turns: Sequence[Generation], values: Sequence[float]
) -> list[tuple[Sampled, list[float]]]:
    """An episode's training sequences, each token of turn k carrying ``values[k]``.

    The sequences are :func:`masks.generated_sequences`'s, split where it splits them (a
    prompt that does not extend what came before starts a new one); tokens the model did not
    write carry 0.
    """
    if len(turns) != len(values):
        raise ValueError(f"{len(values)} turn values for {len(turns)} turns")
    sequences = iter(generated_sequences(turns))
    rows: list[tuple[Sampled, list[float]]] = []
    ids: list[int] = []
    advantages: list[float] = []
    for turn, value in zip(turns, values, strict=True):
        prompt = list(turn.prompt_ids)
        if ids and prompt[: len(ids)] != ids:
            rows.append((next(sequences), advantages))
            ids, advantages = [], []
        new = prompt[len(ids) :]
        ids += new + list(turn.token_ids)
        advantages += [0.0] * len(new) + [value] * len(turn.token_ids)
    if ids:
        rows.append((next(sequences), advantages))
    for sampled, a in rows:
        assert len(sampled.input_ids) == len(a)  # the same splits as generated_sequences
    return rows


def per_turn_batch(
    episodes: Sequence[Episode],
    episode_advantages: Sequence[float],
    turn_values: Sequence[Sequence[float]],
) -> list[tuple[Sampled, Advantage]]:
    """The sequences to train on: each student token's advantage is its turn's plus its episode's.

    Episodes with an infrastructure error teach nothing, nor do those with no turn values
    (not scored). A sequence whose every advantage is 0 carries no gradient and is left out.
    """
    batch: list[tuple[Sampled, Advantage]] = []
    for e, a, values in zip(episodes, episode_advantages, turn_values, strict=True):
        if e.trajectory.status != "ok" or not values:
            continue
        for sampled, per_token in token_advantages(e.turns, [v + a for v in values]):
            if any(per_token):
                batch.append((sampled, per_token))
    return batch
