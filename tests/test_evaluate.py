"""Evaluation metrics: estimators, intervals, breakdowns; and the eval command end to end."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from trajgym.cli import app
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import GenerateConfig
from trajgym.rollouts.generate import generate
from trajgym.train.evaluate import bootstrap_ci, pass_at_k, pass_hat_k, summarize


def test_pass_at_k_and_pass_hat_k() -> None:
    assert pass_at_k(4, 0, 2) == 0.0 and pass_at_k(4, 4, 2) == 1.0
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 0.5
    assert pass_hat_k(4, 2, 2) == pytest.approx(1 / 6) and pass_hat_k(4, 4, 4) == 1.0
    assert pass_hat_k(4, 3, 1) == pytest.approx(0.75) == pass_at_k(4, 3, 1)


def test_bootstrap_interval_brackets_the_rate_and_narrows_with_data() -> None:
    small = [[True], [False]] * 5
    large = [[True], [False]] * 200
    lo, hi = bootstrap_ci(small)
    lo2, hi2 = bootstrap_ci(large)
    assert lo < 0.5 < hi and lo2 < 0.5 < hi2 and hi2 - lo2 < hi - lo
    assert bootstrap_ci([[True]] * 10) == (1.0, 1.0)


def test_summary_of_expert_and_floor(tmp_path) -> None:
    expert = tmp_path / "expert.jsonl"
    generate(
        GenerateConfig(split="test", num_tasks=10, samples_per_task=3, output=expert),
        show_progress=False,
    )
    m = summarize(read_trajectories(expert), k=3)
    assert m["episodes"] == 30 and m["tasks"] == 10 and m["success_rate"] == 1.0
    assert m["pass@3"] == 1.0 and m["pass^3"] == 1.0 and m["success_ci95"] == (1.0, 1.0)
    assert m["avg_tool_calls"] > 1 and m["avg_invalid_tool_calls"] == 0
    assert sum(r["episodes"] for r in m["by_family"].values()) == 30
    random_out = tmp_path / "random.jsonl"
    cfg = GenerateConfig(split="test", num_tasks=10, output=random_out, agent={"kind": "random"})
    generate(cfg, show_progress=False)
    r = summarize(read_trajectories(random_out), k=1)
    assert r["success_rate"] == 0.0 and r["avg_tool_errors"] > 0


def test_eval_command_writes_metrics(tmp_path) -> None:
    out = tmp_path / "e.jsonl"
    result = CliRunner().invoke(
        app,
        ["eval", "--agent", "expert", "--split", "test", "--num-tasks", "8", "--k", "2", "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.with_suffix(".eval.json").read_text())
    assert metrics["episodes"] == 16 and metrics["pass^2"] == 1.0
    assert "success_rate" in result.output


def test_failures_are_told_apart_by_their_verdicts() -> None:
    from trajgym.agents.baselines import DoNothingAgent
    from trajgym.agents.expert import ScriptedExpert
    from trajgym.envs import make
    from trajgym.rollouts.rollout import rollout
    from trajgym.train.failures import failure_of, failure_rows

    env = make("trajgym/RetailLite-v0", split="test")
    cancel = next(t for t in env.unwrapped.tasks() if t.family == "cancel_pending_order")  # type: ignore[attr-defined]
    solved = rollout(env, ScriptedExpert(), seed=0, task_id=cancel.id)
    idle = rollout(env, DoNothingAgent(), seed=0, task_id=cancel.id)
    short = make("trajgym/RetailLite-v0", split="test", max_episode_steps=2)
    cut = rollout(short, ScriptedExpert(), seed=0, task_id=cancel.id)
    assert failure_of(solved) is None
    assert failure_of(idle) == "changed nothing"
    assert failure_of(cut) == "ran out of turns"
    rows = failure_rows("x", "test", [solved, idle, cut])
    assert rows == [
        "| x | test | cancel_pending_order | 2/3 | changed nothing (1); ran out of turns (1) |"
    ]
