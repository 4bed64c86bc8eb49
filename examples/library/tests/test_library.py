"""The library domain, written only through trajgym's kit, behaves like a built-in one."""

from __future__ import annotations

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env
from typer.testing import CliRunner

from trajgym.agents.baselines import DoNothingAgent, RandomToolAgent
from trajgym.agents.expert import ScriptedExpert
from trajgym.cli import app
from trajgym.envs import env_ids, tasks_of, tool_env
from trajgym.records.schema import SPLITS
from trajgym.records.store import read_trajectories
from trajgym.rollouts.rollout import rollout

pytest.importorskip("trajgym_library", reason="pip install -e examples/library (setup.sh does)")
ENV = "library/Loans-v0"


def test_the_installed_package_registers_its_env_through_the_entry_point() -> None:
    assert ENV in env_ids()
    result = CliRunner().invoke(app, ["envs"])
    assert result.exit_code == 0 and ENV in result.output


def test_it_passes_gymnasiums_checker() -> None:
    check_env(gymnasium.make(ENV).unwrapped, skip_render_check=True)


def test_thousands_of_tasks_whose_splits_share_no_member() -> None:
    members = {s: {t.goal.identity["email"] for t in tasks_of(ENV, s)} for s in SPLITS}
    assert sum(len(tasks_of(ENV, s)) for s in SPLITS) >= 2000
    assert not members["train"] & members["test"] and not members["train"] & members["ood"]
    assert not members["test"] & members["ood"]
    assert {t.phrasing_set for t in tasks_of(ENV, "ood")} == {"B"}
    assert "multi_intent" in {t.family for t in tasks_of(ENV, "ood")}
    assert "multi_intent" not in {t.family for t in tasks_of(ENV, "train")}


@pytest.mark.parametrize("split", SPLITS)
def test_the_expert_solves_every_task_and_the_floors_none(split: str) -> None:
    env = tool_env(ENV, split=split)
    for i, task in enumerate(env.tasks()):
        t = rollout(env, ScriptedExpert(), seed=i, task_id=task.id)
        assert t.reward == 1.0, (task.id, t.verdict)
    for agent in (DoNothingAgent(), RandomToolAgent()):
        floor = [rollout(env, agent, seed=i, task_id=t.id) for i, t in enumerate(env.tasks()[:60])]
        assert sum(t.reward for t in floor) == 0, type(agent).__name__


def test_a_renewal_without_the_members_yes_is_a_violation() -> None:
    env = tool_env(ENV, split="test")
    task = next(t for t in env.tasks() if t.family == "renew_loan")
    env.reset(options={"task_id": task.id})
    for action in task.gold_actions:
        env.step({"role": "assistant", "tool_calls": [_call(action.name, action.arguments)]})
    verdict = env.verify()
    assert verdict.state_match and verdict.violations and verdict.reward == 0.0


def test_generate_and_view_play_it_end_to_end(tmp_path) -> None:
    out = tmp_path / "library.jsonl"
    args = ["generate", "--env", ENV, "--split", "test", "--num-tasks", "8", "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    stored = list(read_trajectories(out))
    assert len(stored) == 8 and all(t.success for t in stored)
    page = tmp_path / "view.html"
    result = CliRunner().invoke(app, ["view", str(out), "-o", str(page)])
    assert result.exit_code == 0, result.output
    assert "renew" in page.read_text() or "loan" in page.read_text()


def _call(name: str, arguments: dict) -> dict:
    import json

    return {
        "id": "c1",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }
