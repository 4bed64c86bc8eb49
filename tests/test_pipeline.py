"""The main job (`trajgym run`) at its smoke size: every stage, the report, and resuming."""

from __future__ import annotations

import json

import pytest
from conftest import needs_smollm2
from typer.testing import CliRunner

from trajgym.cli import app
from trajgym.config import load_config
from trajgym.errors import ConfigError
from trajgym.experiments.pipeline import PipelineConfig
from trajgym.records.store import read_trajectories


@needs_smollm2
@pytest.mark.timeout(900)
def test_quickstart_smoke_runs_every_stage_and_resumes(tmp_path) -> None:
    out = tmp_path / "run"
    args = ["run", "configs/quickstart.yaml", "--smoke", "--set", f"output_dir={out}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"teacher", "base student", "sft student", "rl student"}
    for agent, by_split in report["results"].items():
        assert set(by_split) == {"test", "ood"}
        for split, metrics in by_split.items():
            stored = list(
                read_trajectories(out / "eval" / f"{agent.replace(' ', '-')}-{split}.jsonl")
            )
            assert metrics["episodes"] + metrics["errors"] == len(stored) == 2
            assert metrics["success_rate"] == sum(t.success for t in stored) / len(stored)
    assert report["results"]["teacher"]["test"]["success_rate"] == 1.0
    assert report["harvest"] == {"episodes": 8, "successes": 8}
    assert report["sft"]["steps"] == 2
    assert (out / "sft" / "model" / "config.json").exists()  # the quickstart trains fully
    assert report["rl"]["steps"] == 1 and report["rl"]["episodes"] == 2
    assert (out / "rl" / "model" / "config.json").exists()  # RL fine-tunes the SFT model fully
    markdown = (out / "report.md").read_text()
    main_table = markdown.split("Success by task family")[0]
    assert main_table.count("| rl student |") == 2 and "| rl student | test | " in markdown
    assert (out / "success.png").stat().st_size
    # Re-running finds every stage done: nothing is generated or trained again.
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "report.json").read_text())["results"] == report["results"]
    assert len(list(read_trajectories(out / "harvest" / "trajectories.jsonl"))) == 8


def test_a_broken_sft_or_rl_section_fails_at_load_time(tmp_path) -> None:
    with pytest.raises(ConfigError, match="sft"):
        load_config(PipelineConfig, "configs/quickstart.yaml", ["sft.lr=-1"])
    with pytest.raises(ConfigError, match="rl.group_size"):
        load_config(PipelineConfig, "configs/quickstart.yaml", ["rl.group_size=1"])
