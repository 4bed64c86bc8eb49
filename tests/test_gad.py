"""GAD: a black-box teacher's text, a discriminator trained on pairs, a reward per student turn."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny_model, tiny_tokenizer

from trajgym.agents.base import EpisodeContext
from trajgym.agents.expert import ScriptedExpert
from trajgym.agents.expert_labeler import ExpertLabeler
from trajgym.agents.replies import Generated
from trajgym.agents.student import StudentAgent, StudentConfig
from trajgym.agents.tool_text import chatml, to_text_messages
from trajgym.envs import make
from trajgym.records.schema import Message, Provenance, Trajectory
from trajgym.rollouts.config import AgentSpec
from trajgym.rollouts.onpolicy import label
from trajgym.rollouts.rollout import rollout
from trajgym.train.discriminator import Discriminator, DiscriminatorConfig, Pair
from trajgym.train.gad import GAD, GADConfig, pairs, teacher_labeller, turn_scores
from trajgym.train.grpo import Episode
from trajgym.train.masks import generated_sequences
from trajgym.train.turn_rewards import per_turn_batch, token_advantages, turn_advantages

ENV = "trajgym/RetailLite-v0"


@pytest.fixture(scope="module")
def tok():
    env = make(ENV, split="train")
    texts = []
    for i, task in enumerate(env.unwrapped.tasks("train")[:4]):
        t = rollout(env, ScriptedExpert(), seed=i, task_id=task.id)
        texts.append(chatml(to_text_messages(t.messages, t.tools)))
    return tiny_tokenizer([*texts, "MARKER answer question"], vocab_size=600)


class WordyStudent:
    """A stand-in student that does what the expert does in other words, recording its tokens.

    (A tiny random model's episodes end after one turn: the simulated user gives up.)
    """

    def __init__(self, tok) -> None:
        self._expert = ScriptedExpert()
        self.tok = tok
        self.turns: list[Generated] = []

    @property
    def provenance(self):
        return Provenance(kind="student", agent="WordyStudent")

    def reset(self, context: EpisodeContext) -> None:
        self._expert.reset(context)
        self._tools = list(context.tools)
        self.turns = []

    def act(self, messages) -> Message:
        m = self._expert.act(messages)
        reply = m if m.tool_calls else m.model_copy(update={"content": f"{m.text} Right?"})
        convo = [x.to_openai() for x in messages]
        prompt = self.tok.apply_chat_template(
            convo, tools=self._tools, add_generation_prompt=True, tokenize=False
        )
        full = self.tok.apply_chat_template(
            [*convo, reply.to_openai()], tools=self._tools, tokenize=False
        )
        ids = self.tok(full[len(prompt) :].rstrip(), add_special_tokens=False).input_ids
        self.turns.append(
            Generated("", 0, 0, tuple(self.tok(prompt).input_ids), tuple(ids), (-1.0,) * len(ids))
        )
        return reply


@pytest.fixture(scope="module")
def episodes(tok) -> list[Episode]:
    """Group 0: a tiny random student, twice; group 1: a wordy stand-in, three turns, twice."""
    env = make(ENV, split="train", max_episode_steps=3)
    student = tiny_model(tok, seed=1)
    tasks = env.unwrapped.tasks("train")
    out = []
    for k in range(2):
        agent = StudentAgent(student, tok, StudentConfig(max_new_tokens=6, temperature=1.0, seed=k))
        t = rollout(env, agent, seed=0, task_id=tasks[0].id)
        agent.end()
        out.append(Episode(0, t, tuple(agent.turns)))
    for k in range(2):
        wordy = WordyStudent(tok)
        t = rollout(env, wordy, seed=k, task_id=tasks[1].id)
        out.append(Episode(1, t, tuple(wordy.turns)))
    return out


def discriminator(tok, **settings) -> Discriminator:
    return Discriminator(tiny_model(tok, seed=7), tok, DiscriminatorConfig(**settings))


class TextOnlyTeacher:
    """A black box: it answers a conversation with a message, and has nothing else to give."""

    def __init__(self) -> None:
        self._expert = ExpertLabeler()
        self.answers = 0

    @property
    def provenance(self):
        return self._expert.provenance

    def reset(self, context: EpisodeContext) -> None:
        self._expert.reset(context)

    def act(self, messages) -> Message:
        self.answers += 1
        return self._expert.act(messages)

    def __getattr__(self, name: str):
        if any(word in name.lower() for word in ("logit", "logprob", "prob", "score", "model")):
            raise AssertionError(f"a black-box teacher was asked for {name!r}")
        raise AttributeError(name)


def context_of(t: Trajectory) -> EpisodeContext:
    base = make(t.env_id, split=t.split).unwrapped
    return EpisodeContext(
        task=base.task_by_id(t.task_id),
        system_prompt=t.messages[0].text,
        tools=t.tools,
        confirm_tools=tuple(n for n, tool in base.toolkit.tools.items() if tool.writes),
        seed=t.seed,
    )


def test_a_text_only_teacher_is_enough_for_a_whole_gad_step(tok, episodes) -> None:
    teachers: list[TextOnlyTeacher] = []

    def labeller(trajectories):
        teachers.append(TextOnlyTeacher())
        return [label(t, teachers[-1], context_of(t)) for t in trajectories]

    settings = {"warmup_steps": 2, "lr": 1e-3, "max_length": 256}  # the conversation's end
    config = GADConfig(discriminator=DiscriminatorConfig(**settings))
    gad = GAD(config, discriminator(tok, **settings), labeller)
    rewards = gad(episodes)
    assert [len(r) for r in rewards] == [len(e.turns) for e in episodes]
    assert teachers[0].answers == sum(len(e.turns) for e in episodes)
    assert gad.stats["d_pairs"] > 0 and gad.stats["label_errors"] == 0
    assert gad.stats["d_steps"] == 3  # two warm-up steps, then the step's own


def test_the_configured_expert_teacher_labels_every_student_turn(episodes) -> None:
    labelled = teacher_labeller(AgentSpec(kind="expert"), concurrency=2)(
        [e.trajectory for e in episodes]
    )
    for t, e in zip(labelled, episodes, strict=True):
        assert t.status == "ok" and len(t.labels) == len(e.turns)
        assert all(p.teacher.role == p.student.role == "assistant" for p in pairs(t))


def test_each_student_turn_gets_its_own_reward_on_its_own_tokens(tok, episodes) -> None:
    e = episodes[2]
    assert len(e.turns) == 3
    [scores] = turn_scores(discriminator(tok), [e])
    assert len(scores) == 3 and len(set(scores)) == 3
    [advantages] = turn_advantages([0], [scores], scale=True)
    assert len(set(advantages)) == 3 and sum(advantages) == pytest.approx(0.0, abs=1e-6)
    [(sampled, per_token)] = per_turn_batch([e], [0.0], [advantages])  # one prefix-stable sequence
    carried = [a for a, m in zip(per_token, sampled.assistant_mask, strict=True) if m]
    expected = [a for a, turn in zip(advantages, e.turns, strict=True) for _ in turn.token_ids]
    assert carried == expected
    assert all(a == 0.0 for a, m in zip(per_token, sampled.assistant_mask, strict=True) if not m)


def test_turn_advantages_pool_a_groups_turns_and_add_the_episodes() -> None:
    adv = turn_advantages([0, 0, 1, 2], [[1.0, 3.0], [2.0], [5.0, 5.0], []], scale=False)
    assert adv == [[-1.0, 1.0], [0.0], [0.0, 0.0], []]


def test_token_advantages_follow_the_sequences_generated_sequences_makes() -> None:
    def turn(prompt, reply):
        return Generated("", 0, 0, tuple(prompt), tuple(reply), tuple(-1.0 for _ in reply))

    turns = [turn([1, 2], [3, 4]), turn([1, 2, 3, 4, 5], [6]), turn([9, 9], [7, 8])]  # 3rd: new
    rows = token_advantages(turns, [0.5, -1.0, 2.0])
    assert [s for s, _ in rows] == generated_sequences(turns)
    assert [a for _, a in rows] == [[0.0, 0.0, 0.5, 0.5, 0.0, -1.0], [0.0, 0.0, 2.0, 2.0]]
    with pytest.raises(ValueError, match="2 turn values for 3 turns"):
        token_advantages(turns, [0.0, 0.0])


def toy_pairs(n: int, offset: int = 0) -> list[Pair]:
    out = []
    for i in range(offset, offset + n):
        state = (
            Message(role="system", content="You help."),
            Message(role="user", content=f"question {i}?"),
        )
        out.append(
            Pair(
                state,
                teacher=Message(role="assistant", content=f"MARKER answer {i}"),
                student=Message(role="assistant", content=f"answer {i}"),
            )
        )
    return out


def accuracy(d: Discriminator, data: list[Pair]) -> float:
    teacher = d.scores([(p.state, p.teacher, ()) for p in data])
    student = d.scores([(p.state, p.student, ()) for p in data])
    return sum(t > s for t, s in zip(teacher, student, strict=True)) / len(data)


def test_the_discriminator_learns_to_tell_a_marked_teacher_from_the_student(tok) -> None:
    d = discriminator(tok, lr=3e-3, micro_batch=4)
    train, held_out = toy_pairs(8), toy_pairs(8, offset=50)
    losses = [d.train_step(train)["loss"] for _ in range(8)]
    assert all(loss == loss for loss in losses)  # finite
    assert losses[-1] < 0.5 * losses[0]
    assert accuracy(d, train) == 1.0
    assert accuracy(d, held_out) > 0.5


def test_scores_are_deterministic_for_a_seed(tok, tmp_path: Path) -> None:
    items = [(p.state, p.student, ()) for p in toy_pairs(3)]
    a, b = discriminator(tok, seed=3), discriminator(tok, seed=3)
    assert a.scores(items) == b.scores(items) == a.scores(items)
    assert a.scores(items) != discriminator(tok, seed=4).scores(items)
    a.train_step(toy_pairs(4))
    b.train_step(toy_pairs(4))
    assert a.scores(items) == b.scores(items)
    assert a.score(*items[0]) == a.scores(items)[0]
    a.save(tmp_path)
    c = discriminator(tok, seed=3)
    c.restore(tmp_path)
    assert c.scores(items) == a.scores(items) and c.steps == 1
