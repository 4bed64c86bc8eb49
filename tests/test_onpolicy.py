"""On-policy distillation: the expert labels any state, labels become training sequences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import tiny_tokenizer

from trajgym.agents.base import EpisodeContext
from trajgym.agents.baselines import DoNothingAgent
from trajgym.agents.expert import ScriptedExpert
from trajgym.agents.expert_labeler import ExpertLabeler
from trajgym.agents.tool_text import chatml, to_text_messages
from trajgym.envs import make
from trajgym.llm.client import LLMConfig
from trajgym.records.schema import FunctionCall, Message, TeacherLabel, ToolCall, Trajectory
from trajgym.records.store import TrajectoryStore, read_trajectories
from trajgym.rollouts.config import AgentSpec
from trajgym.rollouts.onpolicy import (
    label,
    label_file,
    same_action,
    teacher_agent,
    training_conversations,
)
from trajgym.rollouts.rollout import rollout
from trajgym.testing.fake_openai import FakeOpenAIServer, FaultPlan
from trajgym.train.masks import tokenize_with_masks
from trajgym.train.sft import SFTConfig, load_examples


def context(env, t: Trajectory) -> EpisodeContext:
    base = env.unwrapped
    return EpisodeContext(
        task=base.task_by_id(t.task_id),
        system_prompt=t.messages[0].text,
        tools=t.tools,
        confirm_tools=tuple(n for n, tool in base.toolkit.tools.items() if tool.writes),
        seed=t.seed,
    )


@pytest.mark.parametrize(
    ("env_id", "split", "n"),
    [
        ("trajgym/RetailLite-v0", "test", 60),
        ("trajgym/RetailLite-v0", "ood", 60),
        ("trajgym/Retail-v1", "test", 40),
        ("trajgym/Airline-v0", "test", 40),
    ],
)
def test_on_the_experts_own_states_the_labeler_does_what_the_expert_did(env_id, split, n) -> None:
    env = make(env_id, split=split)
    turns = 0
    for i, task in enumerate(env.unwrapped.tasks(split)[:n]):
        t = rollout(env, ScriptedExpert(), seed=i, task_id=task.id)
        labeler = ExpertLabeler()
        labeler.reset(context(env, t))
        for j, m in enumerate(t.messages):
            if m.role == "assistant":
                turns += 1
                labelled = labeler.act(t.messages[:j])
                assert bool(labelled.tool_calls) == bool(m.tool_calls), (task.id, j)
                assert same_action(labelled, m) or not m.tool_calls, (task.id, j)
    assert turns > 3 * n


def expert_trajectory(task_index: int = 0, family: str = "cancel_pending_order") -> Trajectory:
    env = make("trajgym/RetailLite-v0", split="train")
    task = [t for t in env.unwrapped.tasks("train") if t.family == family][task_index]
    return rollout(env, ScriptedExpert(), seed=3, task_id=task.id)


def test_after_a_student_mistake_the_teacher_repairs_it() -> None:
    """A wrong call (bad id) is followed by the gold call; a skipped confirmation is asked."""
    gold = expert_trajectory()
    env = make("trajgym/RetailLite-v0", split="train")
    labeler = ExpertLabeler()
    labeler.reset(context(env, gold))
    auth_turn = next(i for i, m in enumerate(gold.messages) if m.tool_calls)
    wrong = Message(
        role="assistant",
        tool_calls=(
            ToolCall(
                id="c1",
                function=FunctionCall(
                    name=gold.messages[auth_turn].tool_calls[0].function.name,
                    arguments='{"email": "nobody@example.com"}',
                ),
            ),
        ),  # noqa: E501
    )
    refused = Message(role="tool", tool_call_id="c1", content="Error: no user with that email")
    history = [*gold.messages[:auth_turn], wrong, refused]
    # The refused call did not authenticate: the teacher makes the right one.
    assert same_action(labeler.act(history), gold.messages[auth_turn])
    # Before the cancellation, the teacher asks for confirmation if the student did not.
    cancel = next(
        i
        for i, m in enumerate(gold.messages)
        if m.tool_calls and m.tool_calls[0].function.name == "cancel_pending_order"
    )
    confirm_question = gold.messages[cancel - 2]
    assert "yes/no" in confirm_question.text
    skipped = [*gold.messages[: cancel - 2]]
    assert "yes/no" in labeler.act(skipped).text
    assert same_action(labeler.act(gold.messages[:cancel]), gold.messages[cancel])


def test_labels_become_one_sequence_per_disagreement() -> None:
    gold = expert_trajectory()
    assistant = [i for i, m in enumerate(gold.messages) if m.role == "assistant"]
    other = Message(role="assistant", content="Something else entirely.")
    # The teacher agrees everywhere except at the second and fourth turns.
    labels = tuple(
        TeacherLabel(index=i, message=other if n in (1, 3) else gold.messages[i])
        for n, i in enumerate(assistant)
    )
    sequences = list(training_conversations(gold.model_copy(update={"labels": labels})))
    assert len(sequences) == 3
    (first, trained1), (second, trained2), (last, trained3) = sequences
    assert first[-1] == other and trained1 == {assistant[0], assistant[1]}
    assert first[:-1] == list(gold.messages[: assistant[1]])
    assert second[-1] == other and trained2 == {assistant[2], assistant[3]}
    assert trained3 == set(assistant[4:]) and last == list(gold.messages[: assistant[-1] + 1])


def test_only_the_labels_carry_loss(tmp_path: Path) -> None:
    gold = expert_trajectory()
    texts = [chatml(to_text_messages(gold.messages, gold.tools))]
    tokenizer = tiny_tokenizer(texts, vocab_size=500)
    tokenizer.chat_template = Path("trajgym/agents/templates/chatml_tools.jinja").read_text()
    messages = [m.to_openai() for m in gold.messages]
    assistant = [i for i, m in enumerate(gold.messages) if m.role == "assistant"]
    every = tokenize_with_masks(tokenizer, messages, gold.tools)
    one = tokenize_with_masks(tokenizer, messages, gold.tools, trained={assistant[-1]})
    assert every.input_ids == one.input_ids
    assert 0 < sum(one.assistant_mask) < sum(every.assistant_mask)
    # The marked tokens are exactly the last assistant turn's: the mask's last run.
    marked = [i for i, bit in enumerate(one.assistant_mask) if bit]
    assert marked == list(range(marked[0], marked[-1] + 1))
    # SFT trains on labelled trajectories whatever the student's own reward was.
    other = Message(role="assistant", content="Something else entirely.")
    failed = gold.model_copy(
        update={"reward": 0.0, "labels": (TeacherLabel(index=assistant[2], message=other),)}
    )
    data = tmp_path / "labelled.jsonl"
    with TrajectoryStore(data) as store:
        store.append(failed)
    tokenizer.save_pretrained(tmp_path / "tok")
    examples = load_examples(SFTConfig(data=[data], output_dir=tmp_path / "o"), tokenizer)
    assert len(examples) == 1
    ids, labels = examples[0]
    trained_text = tokenizer.decode([y for y in labels if y != -100])
    assert "Something else entirely." in trained_text
    assert len(ids) < len(every.input_ids)  # the sequence ends at the label


def test_label_file_with_the_expert_is_resumable(tmp_path: Path) -> None:
    env = make("trajgym/RetailLite-v0", split="train")
    rollouts = tmp_path / "student.jsonl"
    with TrajectoryStore(rollouts) as store:
        for i, task in enumerate(env.unwrapped.tasks("train")[:4]):
            store.append(rollout(env, DoNothingAgent(), seed=i, task_id=task.id))
    out = tmp_path / "labelled.jsonl"
    counts = label_file(rollouts, out, AgentSpec(kind="expert"), show_progress=False)
    assert counts == {"rollouts": 4, "labelled": 4, "errors": 0, "skipped": 0}
    labelled = list(read_trajectories(out))
    assert all(t.provenance.kind == "on_policy_teacher" for t in labelled)
    assert all(len(t.labels) == sum(m.role == "assistant" for m in t.messages) for t in labelled)
    # A student that never asks anything: the teacher first asks for identity.: the teacher keeps asking for identity.
    assert all("verify your identity" in t.labels[0].message.text for t in labelled)
    again = label_file(rollouts, out, AgentSpec(kind="expert"), show_progress=False)
    assert again["skipped"] == 4 and len(list(read_trajectories(out))) == 4


def llm(server: FakeOpenAIServer) -> LLMConfig:
    return LLMConfig(
        model="openai/fake",
        api_base=server.base_url,
        backoff_s=0.01,
        backoff_max_s=0.02,
        timeout_s=2,
        max_attempts=2,
    )


def test_an_llm_teacher_labels_each_state_and_its_cost_adds_up() -> None:
    gold = expert_trajectory(family="order_status")
    seen: list[int] = []

    def answer(body):
        seen.append(len(body["messages"]))
        return {"role": "assistant", "content": f"label at {len(body['messages'])}"}

    env = make("trajgym/RetailLite-v0", split="train")
    with FakeOpenAIServer(answer) as server:
        spec = AgentSpec(kind="litellm", llm=llm(server))
        labelled = label(gold, teacher_agent(spec), context(env, gold))
    assistant = [i for i, m in enumerate(gold.messages) if m.role == "assistant"]
    assert [x.index for x in labelled.labels] == assistant
    assert seen == assistant  # the teacher saw exactly the prefix before each student turn
    assert [x.message.text for x in labelled.labels] == [f"label at {i}" for i in assistant]
    assert labelled.provenance.kind == "on_policy_teacher"
    assert labelled.provenance.model == "openai/fake"
    assert labelled.usage.prompt_tokens > gold.usage.prompt_tokens


def test_a_teacher_that_keeps_failing_marks_the_record_error_not_a_label() -> None:
    gold = expert_trajectory(family="order_status")
    env = make("trajgym/RetailLite-v0", split="train")
    with FakeOpenAIServer(
        lambda body: {"role": "assistant", "content": "x"},
        faults=FaultPlan(rate=1.0, kinds=("server_error",)),
    ) as server:
        labelled = label(
            gold, teacher_agent(AgentSpec(kind="litellm", llm=llm(server))), context(env, gold)
        )
    assert labelled.status == "error" and labelled.error.startswith("teacher:")
    assert labelled.labels == ()
    assert json.loads(labelled.model_dump_json())["status"] == "error"
