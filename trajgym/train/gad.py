"""Generative Adversarial Distillation (GAD): black-box on-policy distillation.

Ye et al. 2025, "Black-Box On-Policy Distillation of Large Language Models" (arXiv
2511.10643). The student is the generator: it acts in the environment (GRPO's rollouts,
``train/rl.py``). At every state it reached, a black-box teacher says what it would have done
(``rollouts/onpolicy.label``: text only, no log-probabilities). A discriminator
(``train/discriminator.py``) learns, alternately with the student, to score the teacher's
reply above the student's at the same state (Bradley-Terry); its score of each student turn
is that turn's reward, so every turn has its own (``train/turn_rewards.py`` makes the rewards
group-relative and puts them on the turn's tokens).

One step, :meth:`GAD.__call__` on the step's episodes: label them; on the first step only,
warm the discriminator up on their pairs; score every student turn; then train the
discriminator on the pairs (the student's update follows, in the RL loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trajgym.llm.client import LLMClient
from trajgym.records.schema import Message, Trajectory
from trajgym.rollouts.config import AgentSpec
from trajgym.rollouts.onpolicy import _Contexts, label, same_action, teacher_agent
from trajgym.train.discriminator import Discriminator, DiscriminatorConfig, Pair
from trajgym.train.grpo import Episode


class GADConfig(BaseModel):
    """GAD's teacher and discriminator."""

    model_config = ConfigDict(extra="forbid")

    teacher: AgentSpec = Field(
        default_factory=AgentSpec,
        description="The black-box teacher that labels the student's states: 'expert' (the "
        "scripted expert from any state) or 'litellm' (any model behind an API).",
    )
    discriminator: DiscriminatorConfig = Field(default_factory=DiscriminatorConfig)
    concurrency: int = Field(16, ge=1, description="Episodes the teacher labels at once.")


Labeller = Callable[[Sequence[Trajectory]], list[Trajectory]]
"""Student trajectories in, the same with the teacher's label at each student turn."""


def teacher_labeller(spec: AgentSpec, concurrency: int = 16) -> Labeller:
    """Labels by ``spec``'s teacher (a fresh agent per episode), ``concurrency`` at once."""
    client = LLMClient(spec.llm) if spec.kind == "litellm" and spec.llm else None
    contexts = _Contexts()

    def one(t: Trajectory) -> Trajectory:
        return label(t, teacher_agent(spec, client), contexts.get(t))

    def run(trajectories: Sequence[Trajectory]) -> list[Trajectory]:
        with ThreadPoolExecutor(max(1, min(concurrency, len(trajectories)))) as pool:
            return list(pool.map(one, trajectories))

    return run


def student_turns(
    t: Trajectory,
) -> list[tuple[tuple[Message, ...], Message, tuple[dict[str, Any], ...]]]:
    """Each assistant turn of ``t`` in its state: ``(messages before it, the turn, tools)``."""
    return [(t.messages[:i], m, t.tools) for i, m in enumerate(t.messages) if m.role == "assistant"]


def pairs(t: Trajectory) -> list[Pair]:
    """The (teacher, student) pairs of a labelled trajectory, one per labelled student turn.

    A turn where the student wrote exactly what the teacher would (same calls, same words) is
    left out: the two score alike, and the pair has no gradient.
    """
    out = []
    for item in t.labels:
        student = t.messages[item.index]
        if same_action(student, item.message) and student.text.strip() == item.message.text.strip():
            continue
        out.append(Pair(t.messages[: item.index], item.message, student, t.tools))
    return out


def turn_scores(discriminator: Discriminator, episodes: Sequence[Episode]) -> list[list[float]]:
    """The discriminator's score of every student turn, episode by episode, in turn order.

    Episodes with an infrastructure error are not scored ([]). An episode's scores line up
    with its generated turns (``Episode.turns``): one per assistant message.
    """
    items = []
    counts = []
    for e in episodes:
        turns = student_turns(e.trajectory) if e.trajectory.status == "ok" else []
        if e.turns and turns and len(turns) != len(e.turns):
            raise ValueError(
                f"Episode of task {e.trajectory.task_id} has {len(turns)} assistant turns but "
                f"{len(e.turns)} generations: its rewards would not line up with its tokens."
            )
        items += turns
        counts.append(len(turns))
    scores = discriminator.scores(items)
    out, start = [], 0
    for n in counts:
        out.append(scores[start : start + n])
        start += n
    return out


class GAD:
    """The discriminator's side of the game; a per-turn reward source for GRPO.

    Called once per RL step with the step's episodes, it returns each student turn's reward
    (the discriminator's score, before this step trains it): a
    :data:`~trajgym.train.turn_rewards.TurnRewards`. ``label`` defaults to the config's teacher.
    """

    def __init__(
        self,
        config: GADConfig,
        discriminator: Discriminator | None = None,
        label: Labeller | None = None,
    ) -> None:
        self.config = config
        self.discriminator = discriminator or Discriminator.load(config.discriminator)
        self.label = label or teacher_labeller(config.teacher, config.concurrency)
        self.stats: dict[str, float] = {}

    def __call__(self, episodes: Sequence[Episode]) -> list[list[float]]:
        """Label, warm up (first call only), score each student turn, then train."""
        ok = [e.trajectory for e in episodes if e.trajectory.status == "ok"]
        labelled = self.label(ok) if ok else []
        batch = [p for t in labelled if t.status == "ok" for p in pairs(t)]
        d = self.discriminator
        settings = d.config
        while d.steps < settings.warmup_steps and batch:
            d.train_step(batch)
        rewards = turn_scores(d, episodes)
        trained: dict[str, float] = {}
        for _ in range(settings.steps_per_update):
            trained = d.train_step(batch)
        scored = [r for rs in rewards for r in rs]
        self.stats = {
            "d_loss": trained.get("loss", 0.0),
            "d_accuracy": trained.get("accuracy", 0.0),
            "d_pairs": float(len(batch)),
            "d_steps": float(d.steps),
            "d_score": sum(scored) / len(scored) if scored else 0.0,
            "label_errors": float(sum(t.status != "ok" for t in labelled)),
        }
        return rewards
