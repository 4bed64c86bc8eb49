"""The command line, run in-process through typer's runner."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from trajgym.cli import app
from trajgym.records.schema import Trajectory

runner = CliRunner()


def test_envs_lists_retail_with_counts() -> None:
    result = runner.invoke(app, ["envs"])
    assert result.exit_code == 0, result.output
    assert "trajgym/Retail-v1" in result.output
    assert "1542" in result.output  # test tasks


def test_tasks_lists_a_family() -> None:
    result = runner.invoke(
        app,
        [
            "tasks",
            "trajgym/Retail-v1",
            "--split",
            "ood",
            "--family",
            "modify_order_payment",
            "--limit",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "ood-modify_order_payment-" in result.output
    assert "modify_order_payment" in result.output.splitlines()[-1]


def test_rollout_prints_conversation_and_verdict() -> None:
    result = runner.invoke(app, ["rollout", "trajgym/Retail-v1", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "assistant" in result.output and "success" in result.output


def test_rollout_many_writes_jsonl(tmp_path) -> None:
    out = tmp_path / "new_dir" / "t.jsonl"
    result = runner.invoke(app, ["rollout", "trajgym/Retail-v1", "--n", "20", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert len(lines) == 20
    assert all(Trajectory.model_validate(json.loads(line)).success for line in lines)
    assert "100%" in result.output


def test_bad_env_id_is_a_clear_error_with_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from trajgym.cli import main; main()", "rollout", "Retail-v1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Did you mean 'trajgym/Retail-v1'" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_unknown_agent_is_refused() -> None:
    result = runner.invoke(app, ["rollout", "trajgym/Retail-v1", "--agent", "wizard"])
    assert result.exit_code == 2
    assert "'wizard' is not one of 'expert', 'nothing', 'random'" in result.output
