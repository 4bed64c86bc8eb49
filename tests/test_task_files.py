"""Tasks from a JSONL file: checked on load, played and verified like built-in ones."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium
import pytest
from typer.testing import CliRunner

from trajgym.agents.expert import ScriptedExpert
from trajgym.cli import app
from trajgym.envs import env_ids, make, tasks_of, tool_env
from trajgym.envs.task_files import TaskFileError, task_file_env_id
from trajgym.errors import ConfigError
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import GenerateConfig
from trajgym.rollouts.generate import generate
from trajgym.rollouts.rollout import rollout

LITE = "trajgym/RetailLite-v0"


def _rows(n: int = 6) -> list[dict]:
    """Built-in test tasks as a person would write them: no env_id, no instruction."""
    rows = []
    for task in tasks_of(LITE, "test")[:n]:
        row = task.model_dump(mode="json")
        del row["env_id"], row["goal"]["instruction"], row["difficulty"]
        rows.append(row)
    return rows


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_a_task_file_plays_under_its_own_id_and_the_expert_solves_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "desk_tasks.jsonl", _rows())
    env = tool_env(LITE, split="test", tasks=path)
    assert env.id == task_file_env_id(LITE, path) == "trajgym/RetailLite.desk_tasks-v0"
    built_in = tasks_of(LITE, "test")[:6]
    assert [t.id for t in env.tasks()] == [t.id for t in built_in]
    assert [t.gold_actions for t in env.tasks()] == [t.gold_actions for t in built_in]
    assert all(t.goal.instruction.startswith("You are a user") for t in env.tasks())
    assert env.tasks("train") == ()
    for task in env.tasks():
        t = rollout(env, ScriptedExpert(), seed=0, task_id=task.id)
        assert t.reward == 1.0 and t.env_id == env.id, t.verdict
    # Registered: anything that makes an env by id finds the file's tasks.
    assert [t.id for t in tasks_of(env.id, "test")] == [t.id for t in env.tasks()]
    assert env.id in gymnasium.registry and env.id not in env_ids()  # a domain's, not a domain


def test_every_problem_of_a_file_is_reported_with_its_line_task_and_field(tmp_path) -> None:
    good, *_ = _rows(1)
    no_request = json.loads(json.dumps(good)) | {"id": "no-request"}
    del no_request["goal"]["intents"][0]["request"]
    unknown_tool = json.loads(json.dumps(good)) | {"id": "unknown-tool"}
    unknown_tool["goal"]["intents"][0]["actions"][0]["name"] = "refund_everything"
    no_order = json.loads(json.dumps(good)) | {"id": "no-order"}
    no_order["goal"]["intents"][0]["actions"][0]["arguments"]["order_id"] = "#W0000000"
    other_env = good | {"id": "other-env", "env_id": "trajgym/Airline-v0"}
    path = _write(
        tmp_path / "broken.jsonl",
        [good, "{not json", no_request, unknown_tool, no_order, good, other_env, "[1, 2]"],
    )
    with pytest.raises(TaskFileError) as error:
        make(LITE, split="test", tasks=path)
    assert task_file_env_id(LITE, path) not in gymnasium.registry  # nothing broken registered
    message = str(error.value)
    for expected in (
        f"{path}:2: not JSON",
        f"{path}:3 (task 'no-request'): goal.intents.0.request: Field required",
        f"{path}:4 (task 'unknown-tool'): goal.intents.0.actions.0.name: unknown tool "
        "'refund_everything'",
        f"{path}:5 (task 'no-order'): goal.intents.0.actions.0: get_order_details fails on "
        "a fresh state",
        f"{path}:6 (task '{good['id']}'): id: the same id as line 1",
        f"{path}:7 (task 'other-env'): env_id: 'trajgym/Airline-v0' is not {LITE}",
        f"{path}:8: a task is a JSON object, not list",
    ):
        assert expected in message, (expected, message)


def test_a_task_the_expert_cannot_solve_stops_generation_before_any_episode(tmp_path) -> None:
    rows = _rows(3)
    rows[1]["goal"]["intents"][0]["outputs"] = ["a fact no tool shows"]
    path = _write(tmp_path / "unsolvable.jsonl", rows)
    config = GenerateConfig(
        envs=[LITE], tasks=path, split="test", output=tmp_path / "t.jsonl", concurrency=2
    )
    with pytest.raises(TaskFileError, match=f"task '{rows[1]['id']}': required outputs never"):
        generate(config, show_progress=False)
    assert not (tmp_path / "t.jsonl").exists() or not list(read_trajectories(tmp_path / "t.jsonl"))


def test_generate_plays_a_task_file_into_a_store(tmp_path: Path) -> None:
    path = _write(tmp_path / "mine.jsonl", _rows(4))
    out = tmp_path / "t.jsonl"
    config = GenerateConfig(envs=[LITE], tasks=path, split="test", output=out, concurrency=2)
    report = generate(config, show_progress=False)
    stored = list(read_trajectories(out))
    assert report.ok == 4 and len(stored) == 4
    assert {t.env_id for t in stored} == {"trajgym/RetailLite.mine-v0"}
    assert all(t.reward == 1.0 for t in stored)


def test_the_tasks_verb_checks_a_file_and_lists_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "listed.jsonl", _rows(5))
    result = CliRunner().invoke(app, ["tasks", LITE, "--split", "test", "--tasks", str(path)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "5 tasks check out" in said and "5 tasks; by family" in said


def test_a_domain_whose_tasks_a_file_cannot_describe_refuses_one(tmp_path: Path) -> None:
    path = _write(tmp_path / "ws.jsonl", _rows(1))
    with pytest.raises(ConfigError, match="cannot play tasks from a file"):
        make("trajgym/Workspace-v0", tasks=path)


def test_two_files_with_one_name_are_not_confused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _write(tmp_path / "a" / "same.jsonl", _rows(1))
    second = _write(tmp_path / "b" / "same.jsonl", _rows(2))
    make(LITE, split="test", tasks=first)
    with pytest.raises(ConfigError, match="rename"):
        make(LITE, split="test", tasks=second)
