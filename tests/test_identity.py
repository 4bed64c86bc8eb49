"""A stored evaluation is reused only when the model, agent, settings and code are the same."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trajgym.experiments import stages
from trajgym.experiments.stages import EvalStage, Place, evaluate
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec
from trajgym.train.identity import agent_identity, folder_digest

PLACE = Place(env="trajgym/RetailLite-v0", split="test", label="test", num_tasks=3)
STAGE = EvalStage(num_tasks=3, max_turns=12)


def test_a_folders_digest_follows_its_weights_not_its_training_state(tmp_path: Path) -> None:
    model = tmp_path / "model"
    (model / "checkpoint").mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    before = folder_digest(model)
    (model / "checkpoint" / "optimizer.bin").write_bytes(b"state")
    (model / "summary.json").write_text("{}")
    assert folder_digest(model) == before
    (model / "model.safetensors").write_bytes(b"retrained")
    assert folder_digest(model) != before
    spec = AgentSpec(kind="student", student=str(model))
    assert agent_identity(spec)["weights"] == folder_digest(model)


@pytest.fixture
def played(monkeypatch) -> list[int]:
    """How many episodes each generation played (0: everything was already stored)."""
    counts: list[int] = []
    generate = stages.generate

    def counted(config, show_progress=True):  # type: ignore[no-untyped-def]
        report = generate(config, show_progress)
        counts.append(report.written)
        return report

    monkeypatch.setattr(stages, "generate", counted)
    return counts


def test_an_unchanged_agent_is_evaluated_once_across_runs(tmp_path: Path, monkeypatch, played) -> None:
    monkeypatch.setenv("TRAJGYM_CACHE", str(tmp_path / "cache"))
    agents = {"expert": AgentSpec(kind="expert")}
    first = evaluate(agents, [PLACE], STAGE, tmp_path / "run1", seed=0, show_progress=False)
    again = evaluate(agents, [PLACE], STAGE, tmp_path / "run2", seed=0, show_progress=False)
    assert played == [3, 0]  # the second run's store came from the cache, played by nobody
    assert first["expert"]["test"].success_rate == again["expert"]["test"].success_rate == 1.0
    other_seed = evaluate(agents, [PLACE], STAGE, tmp_path / "run3", seed=1, show_progress=False)
    assert played[-1] == 3 and other_seed["expert"]["test"].episodes == 3


def test_a_changed_agent_never_inherits_the_stored_episodes(tmp_path: Path, monkeypatch, played) -> None:
    monkeypatch.setenv("TRAJGYM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    evaluate({"agent": AgentSpec(kind="expert")}, [PLACE], STAGE, out, 0, show_progress=False)
    # Same name and place, another agent (a retrained student is the same case: new weights).
    results = evaluate({"agent": AgentSpec(kind="nothing")}, [PLACE], STAGE, out, 0, False)
    assert played == [3, 3] and results["agent"]["test"].success_rate == 0.0
    store = out / "agent-test.jsonl"
    assert {t.provenance.agent for t in read_trajectories(store)} == {"DoNothingAgent"}
    stale = list(out.glob("agent-test.stale-*.jsonl"))
    assert len(stale) == 1 and len(list(read_trajectories(stale[0]))) == 3  # moved aside, kept
    identity = json.loads((out / "agent-test.identity.json").read_text())
    assert identity["agent"]["spec"]["kind"] == "nothing" and identity["code"]
