"""`trajgym compare` at its smoke size: every source, every place, the report, resuming."""

from __future__ import annotations

import json

import pytest
from conftest import needs_smollm2
from typer.testing import CliRunner

from trajgym.cli import app
from trajgym.config import load_config
from trajgym.errors import ConfigError
from trajgym.experiments.compare import CompareConfig
from trajgym.records.store import read_trajectories


@needs_smollm2
@pytest.mark.timeout(1500)
def test_compare_smoke_trains_a_student_per_source_and_resumes(tmp_path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "configs/compare.yaml", "--smoke", "--set", f"output_dir={out}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"Report: {out / 'results' / 'report.md'}" in result.output.replace("\n", "")
    report = json.loads((out / "results" / "report.json").read_text())
    data = out / "data" / "b2"
    # Teacher data is verified; the untrained generator's own episodes all fail, so the self
    # source is empty and says so, while on-policy data labels those failed episodes.
    available = report["available"]
    assert available["teacher"] == available["on_policy"] == available["logit_kd"] == 2
    assert available["rationale"] == 2 and available["gad"] is None
    assert available["self"] == 0 and "self student" not in report["results"]
    assert available["opd"] is None  # it plays its own episodes
    assert "self yielded none" in (out / "results" / "report.md").read_text()
    assert report["matched_budget"] == {"2": 2}
    for source in ("teacher", "on_policy"):
        assert len(list(read_trajectories(data / f"{source}.jsonl"))) == 2
        assert report["data"][f"{source} student"]["trajectories"] == 2
        assert report["data"][f"{source} student"]["trained_tokens"] > 0
    # Output imitation trains on the teacher's words without its stated plans; rationale with.
    imitated = list(read_trajectories(data / "teacher.jsonl"))
    reasoned = list(read_trajectories(data / "rationale.jsonl"))
    assert [t.key for t in imitated] == [t.key for t in reasoned]
    assert any(m.plan for t in reasoned for m in t.messages)
    assert not any(m.plan for t in imitated for m in t.messages)
    labelled = list(read_trajectories(data / "on_policy.jsonl"))
    assert all(t.labels and t.provenance.kind == "on_policy_teacher" for t in labelled)
    # DAgger: one demonstration, then one round of one labelled episode of its own student.
    aggregated = list(read_trajectories(data / "dagger" / "all.jsonl"))
    assert [t.provenance.kind for t in aggregated] == ["expert", "on_policy_teacher"]
    compute = report["compute"]
    assert compute["gad student"]["episodes"] == 2
    assert compute["logit_kd student"]["teacher_scored_tokens"] > 0
    assert compute["opd student"]["teacher_scored_tokens"] > 0
    assert compute["opd student"]["episodes"] == compute["sft+rl student"]["episodes"] == 2
    sft_rl, sft = compute["sft+rl student"], compute["teacher student"]
    assert sft_rl["trained_tokens"] >= sft["trained_tokens"]  # a group of equal rewards: none
    assert sft_rl["teacher_turns"] == sft["teacher_turns"] > 0
    places = {"test", "ood", "Airline-v0 (held-out domain)"}
    sources = ("teacher", "rationale", "logit_kd", "on_policy", "dagger", "opd", "gad")
    students = {f"{s} student" for s in sources}
    assert set(report["results"]) == {"teacher", "base student", "sft+rl student", *students}
    assert all(set(by_place) == places for by_place in report["results"].values())
    assert report["results"]["teacher"]["test"]["success_rate"] == 1.0
    assert (out / "results" / "success.png").stat().st_size
    assert "test minus ood" in (out / "results" / "report.md").read_text()
    # Resuming redoes nothing and reports the same.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "results" / "report.json").read_text())["results"] == report["results"]
    assert len(list(read_trajectories(out / "data" / "self.rollouts.jsonl"))) == 4


def test_a_broken_compare_config_fails_at_load_time() -> None:
    with pytest.raises(ConfigError, match="sft"):
        load_config(CompareConfig, "configs/compare.yaml", ["sft.lr=-1"])
    with pytest.raises(ConfigError, match="sources"):
        load_config(CompareConfig, "configs/compare.yaml", ["sources=[teacher,mystery]"])
