"""DAgger as published: demonstrations, then rounds of play, label, retrain on everything."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny_model, tiny_tokenizer

from trajgym.agents.tool_text import chatml, to_text_messages
from trajgym.experiments.compare_config import CompareConfig
from trajgym.experiments.sources import Pools, dagger_plan, make_student
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec
from trajgym.rollouts.selfgen import SelfGenConfig, self_generate


@pytest.mark.parametrize(
    ("budget", "rounds", "share", "expected"),
    [(10, 2, 0.5, (5, [3, 2])), (7, 3, 0.0, (0, [3, 2, 2])), (4, 1, 1.0, (4, [0]))],
)
def test_the_plan_spends_exactly_the_budget(budget, rounds, share, expected) -> None:
    demos, per_round = dagger_plan(budget, rounds, share)
    assert (demos, per_round) == expected and demos + sum(per_round) == budget


def test_every_round_trains_on_the_demonstrations_and_all_earlier_labels(tmp_path: Path) -> None:
    data = tmp_path / "data"
    harvest = SelfGenConfig(
        agent=AgentSpec(kind="expert"),
        samples_per_task=1,
        max_tasks=8,
        tasks_per_round=8,
        target=4,
        keep="verified",
        provenance=None,
        output=data / "teacher.jsonl",
    )
    self_generate(harvest, show_progress=False)
    texts = [
        chatml(to_text_messages(t.messages, t.tools)) for t in read_trajectories(harvest.output)
    ]
    tok = tiny_tokenizer(texts, vocab_size=700)
    tiny_model(tok).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    config = CompareConfig(
        output_dir=tmp_path,
        sources=["dagger"],
        dagger={"rounds": 2, "demo_share": 0.5},
        sft={"model": str(tmp_path / "tiny"), "lora": False, "max_optimizer_steps": 1},
        rollouts={"max_new_tokens": 8, "max_turns": 3, "temperature": 1.0},
    )
    pools = Pools(harvest.output, harvest.rollouts_path, first_free_task=20)
    trained = make_student(config, "dagger", 4, pools)
    rounds = tmp_path / "data" / "b4" / "dagger"
    demos = [t.key for t in read_trajectories(rounds / "round-0.jsonl")]
    first = [t.key for t in read_trajectories(rounds / "round-1.jsonl")]
    second = [t.key for t in read_trajectories(rounds / "round-2.jsonl")]
    assert len(demos) == 2 and len(first) == len(second) == 1
    assert set(first).isdisjoint(second)  # each round plays fresh tasks
    # Each round's student trained on the demonstrations and every round so far; the last one
    # is the run's student, and its data is all of it.
    assert [t.key for t in read_trajectories(rounds / "round-1.all.jsonl")] == demos + first
    assert [
        t.key for t in read_trajectories(rounds / "round-2.all.jsonl")
    ] == demos + first + second
    assert trained.data is not None
    assert [t.key for t in read_trajectories(trained.data)] == demos + first + second
    assert trained.model.folder == tmp_path / "students" / "b4" / "dagger" / "round-2" / "model"
    # Round 2 was played by round 1's student, and the teacher labelled it.
    played = list(read_trajectories(rounds / "round-2.played.rollouts.jsonl"))
    assert played[0].provenance.model and "round-1" in played[0].provenance.model
    assert all(t.labels is not None for t in read_trajectories(rounds / "round-2.jsonl"))
    assert trained.compute["teacher_turns"] > 0 and trained.compute["trained_tokens"] > 0
