"""Stripping the expert's plans removes exactly its plan sentences, on real expert episodes.

The ``rationale`` comparison trains on the teacher's trajectories with the plans kept and,
as its control, on the same trajectories stripped of them: the difference is measured only
if the control differs in nothing else.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from trajgym.agents.base import EpisodeContext
from trajgym.agents.expert_labeler import ExpertLabeler
from trajgym.envs import make
from trajgym.envs.base import ToolEnv
from trajgym.records.schema import FunctionCall, Message, ToolCall, Trajectory
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import GenerateConfig
from trajgym.rollouts.generate import generate
from trajgym.rollouts.onpolicy import label
from trajgym.rollouts.rationale import STRIPPED, strip_file, strip_rationale

ENVS = ["trajgym/RetailLite-v0", "trajgym/Airline-v0"]


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Expert episodes of every family of both domains (train and held-out phrasings)."""
    out = tmp_path_factory.mktemp("rationale") / "expert.jsonl"
    for split in ("train", "ood"):
        config = GenerateConfig(
            envs=ENVS, split=split, num_tasks=8, balance_families=True, output=out
        )
        generate(config, show_progress=False)
    return out


@pytest.fixture(scope="module")
def pairs(episodes: Path) -> list[tuple[Trajectory, Trajectory]]:
    originals = list(read_trajectories(episodes))
    assert {t.env_id for t in originals} == set(ENVS) and len(originals) == 32
    return [(t, strip_rationale(t)) for t in originals]


def _dump(m: Message) -> str:
    return json.dumps(m.to_openai(), sort_keys=True)


def _calls(m: Message) -> str:
    return json.dumps([c.model_dump() for c in m.tool_calls or ()], sort_keys=True)


def test_every_episode_says_a_plan(pairs: list[tuple[Trajectory, Trajectory]]) -> None:
    for original, _ in pairs:
        plans = [m.plan for m in original.messages if m.plan is not None]
        assert plans, f"{original.task_id}: the expert said no plan"
        assert original.success  # the plans cost the expert nothing
    families = {(t.env_id, t.family) for t, _ in pairs}
    assert len(families) >= 10  # not one family's words only


def test_tool_calls_and_plain_messages_are_byte_identical(
    pairs: list[tuple[Trajectory, Trajectory]],
) -> None:
    for original, stripped in pairs:
        assert len(stripped.messages) == len(original.messages)
        for before, after in zip(original.messages, stripped.messages, strict=True):
            assert _calls(after) == _calls(before)
            if before.plan is None:
                assert _dump(after) == _dump(before)
                assert after == before


def test_exactly_the_plan_sentences_go(pairs: list[tuple[Trajectory, Trajectory]]) -> None:
    for original, stripped in pairs:
        said = [m.plan for m in original.messages if m.plan]
        for before, after in zip(original.messages, stripped.messages, strict=True):
            assert after.plan is None
            if before.plan is None:
                continue
            # What is left is the rest of the message, to the byte, or None with the calls.
            rest = before.text.removeprefix(before.plan)
            assert after.content == (rest.removeprefix(" ") or None)
            assert after.content is not None or after.tool_calls
            assert all(plan not in after.text for plan in said)
        for m in stripped.messages:  # never an empty assistant message
            assert m.role != "assistant" or m.content or m.tool_calls


def test_the_rest_of_the_record_is_unchanged(pairs: list[tuple[Trajectory, Trajectory]]) -> None:
    for original, stripped in pairs:
        for before, after in zip(original.messages, stripped.messages, strict=True):
            if before.role != "assistant":
                assert after == before
        drop = {"messages", "provenance"}
        assert stripped.model_dump(exclude=drop) == original.model_dump(exclude=drop)
        assert stripped.reward == original.reward and stripped.verdict == original.verdict
        assert stripped.provenance.edits == (STRIPPED,)
        assert stripped.provenance.model_copy(update={"edits": ()}) == original.provenance
        assert strip_rationale(stripped) == stripped


def test_plans_are_in_the_trained_text_and_not_in_the_wire_format(
    pairs: list[tuple[Trajectory, Trajectory]],
) -> None:
    """The plan lives in content (what SFT and the exports render), marked beside it."""
    original, _ = pairs[0]
    m = next(m for m in original.messages if m.plan)
    assert "plan" not in m.to_openai() and m.plan in m.to_openai()["content"]
    assert Trajectory.model_validate_json(original.model_dump_json()) == original


def test_strip_file_writes_each_trajectory_once(episodes: Path, tmp_path: Path) -> None:
    dst = tmp_path / "control.jsonl"
    assert strip_file(episodes, dst) == 32
    assert strip_file(episodes, dst) == 0  # resumed: nothing written twice
    stripped = list(read_trajectories(dst))
    assert stripped == [strip_rationale(t) for t in read_trajectories(episodes)]


def test_the_labeler_marks_its_plans_and_labels_are_stripped(
    pairs: list[tuple[Trajectory, Trajectory]],
) -> None:
    """On-policy labels are the expert's words too: their plans are marked the same way."""
    original = next(t for t, _ in pairs if t.env_id == ENVS[0])
    env = make(original.env_id, split=original.split).unwrapped
    assert isinstance(env, ToolEnv)
    context = EpisodeContext(
        task=env.task_by_id(original.task_id),
        system_prompt=original.messages[0].text,
        tools=original.tools,
        confirm_tools=tuple(n for n, tool in env.toolkit.tools.items() if tool.writes),
        seed=original.seed,
    )
    labelled = label(original, ExpertLabeler(), context)
    env.close()
    assert any(x.message.plan for x in labelled.labels)
    stripped = strip_rationale(labelled)
    for before, after in zip(labelled.labels, stripped.labels, strict=True):
        assert after.index == before.index and after.message.plan is None
        assert _calls(after.message) == _calls(before.message)
        if before.message.plan is None:
            assert after.message == before.message


def test_a_plan_must_open_an_assistant_message() -> None:
    call = (ToolCall(id="call_1", function=FunctionCall(name="f")),)
    Message(role="assistant", content="I will look. Which order?", plan="I will look.")
    Message(role="assistant", content="I will look.", plan="I will look.", tool_calls=call)
    for bad in (
        {"role": "assistant", "content": "Which order? I will look.", "plan": "I will look."},
        {"role": "assistant", "content": "I will look.", "plan": "I will look."},  # no call
        {"role": "assistant", "content": "I will looks", "plan": "I will look"},
        {"role": "assistant", "content": "x", "plan": "", "tool_calls": call},
        {"role": "user", "content": "I will look. Ok?", "plan": "I will look."},
    ):
        with pytest.raises(ValidationError):
            Message.model_validate(bad)
