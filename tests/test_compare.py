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
@pytest.mark.timeout(900)
def test_compare_smoke_trains_a_student_per_source_and_resumes(tmp_path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "configs/compare.yaml", "--smoke", "--set", f"output_dir={out}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    data = out / "data"
    # Teacher data is verified; the untrained generator's own episodes all fail, so the self
    # source is empty and says so, while on-policy data labels those failed episodes.
    assert report["available"]["teacher"] == 2 and report["available"]["on_policy"] == 2
    assert report["available"]["self"] == 0 and "self student" not in report["results"]
    assert "self yielded none" in (out / "report.md").read_text()
    assert report["matched_budget"] == 2
    for source in ("teacher", "on_policy"):
        assert len(list(read_trajectories(data / f"train-{source}.jsonl"))) == 2
        assert report["data"][source]["trajectories"] == 2
        assert report["data"][source]["trained_tokens"] > 0
    labelled = list(read_trajectories(data / "train-on_policy.jsonl"))
    assert all(t.labels and t.provenance.kind == "on_policy_teacher" for t in labelled)
    places = {"test", "ood", "Airline-v0 (held-out domain)"}
    assert set(report["results"]) == {
        "teacher",
        "base student",
        "teacher student",
        "on_policy student",
    }
    assert all(set(by_place) == places for by_place in report["results"].values())
    assert report["results"]["teacher"]["test"]["success_rate"] == 1.0
    assert (out / "success.png").stat().st_size
    # Resuming redoes nothing and reports the same.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "report.json").read_text())["results"] == report["results"]
    assert len(list(read_trajectories(data / "self.rollouts.jsonl"))) == 4


def test_a_broken_compare_config_fails_at_load_time() -> None:
    with pytest.raises(ConfigError, match="sft"):
        load_config(CompareConfig, "configs/compare.yaml", ["sft.lr=-1"])
    with pytest.raises(ConfigError, match="sources"):
        load_config(CompareConfig, "configs/compare.yaml", ["sources=[teacher,mystery]"])
