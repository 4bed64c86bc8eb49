"""The Workspace domain: its tasks, its sandbox per episode, and verification that can't be fooled."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from trajgym.agents.baselines import DoNothingAgent, RandomToolAgent
from trajgym.agents.expert import ScriptedExpert
from trajgym.envs import make
from trajgym.envs.workspace import WorkspaceEnv
from trajgym.envs.workspace.code import catalog
from trajgym.envs.workspace.tasks import make_tasks
from trajgym.records.schema import FunctionCall, Message, Task, ToolCall
from trajgym.rollouts.rollout import rollout
from trajgym.tools.sandbox import docker_available, orphans

ENV_ID = "trajgym/Workspace-v0"


def _call(name: str, **arguments: object) -> Message:
    call = ToolCall(
        id=f"c_{name}", function=FunctionCall(name=name, arguments=json.dumps(arguments))
    )
    return Message(role="assistant", tool_calls=(call,))


def _play(env: WorkspaceEnv, task: Task, actions: list[Message], final: str = "Done.") -> object:
    """Reset to ``task``, run ``actions``, then tell the user ``final``; the verdict."""
    env.reset(seed=0, options={"task_id": task.id})
    for action in actions:
        obs, *_ = env.step(action)
    _, reward, terminated, _, info = env.step(final)
    assert terminated, "the scripted user ends the conversation after the report"
    return info["verdict"]


def _first(split: str, family: str) -> Task:
    return next(t for t in make_tasks(split).tasks if t.family == family)


@pytest.fixture
def env():
    e = make(ENV_ID, split="train").unwrapped
    yield e
    e.close()


def test_task_counts_families_and_held_out_parts() -> None:
    counts = {s: Counter(t.family for t in make_tasks(s).tasks) for s in ("train", "test", "ood")}
    assert sum(counts["train"].values()) == 1500 and sum(counts["test"].values()) == 500
    assert set(counts["ood"]) - set(counts["train"]) == {"csv_join"}
    assert sum(counts["ood"].values()) == 550
    ids = [t.id for s in counts for t in make_tasks(s).tasks]
    assert len(ids) == len(set(ids))
    assert {t.phrasing_set for t in make_tasks("ood").tasks} == {"B"}
    assert {t.phrasing_set for s in ("train", "test") for t in make_tasks(s).tasks} == {"A"}


def test_no_project_shared_between_splits_and_ood_functions_held_out() -> None:
    def projects(split: str) -> set[str]:
        ts = make_tasks(split)
        return {json.dumps(ts.projects[t.id].files, sort_keys=True) for t in ts.tasks}

    train, test, ood = projects("train"), projects("test"), projects("ood")
    assert not train & test and not train & ood and not test & ood
    held_out = {n for n, f in catalog().items() if f.ood}
    assert len(held_out) >= 4
    for split in ("train", "test", "ood"):
        ts = make_tasks(split)
        sources = [
            c
            for t in ts.tasks
            if t.family == "fix_bug"
            for p, c in ts.projects[t.id].files.items()
            if p.startswith("src/")
        ]
        used = {n for n in catalog() if any(f"def {n}(" in s for s in sources)}
        assert (used <= held_out) if split == "ood" else not used & held_out


def _expert_solves(split: str) -> list[str]:
    tasks = make_tasks(split).tasks

    def run(chunk: tuple[Task, ...]) -> list[str]:
        e = make(ENV_ID, split=split)
        failed = [
            t.id for t in chunk if rollout(e, ScriptedExpert(), seed=1, task_id=t.id).reward != 1.0
        ]
        e.close()
        return failed

    with ThreadPoolExecutor(2) as pool:  # sandboxes are processes: two run side by side
        return [f for part in pool.map(run, (tasks[0::2], tasks[1::2])) for f in part]


@pytest.mark.parametrize("split", ["train", "test", "ood"])
def test_expert_solves_every_task(split: str) -> None:
    assert _expert_solves(split) == []


@pytest.mark.parametrize("agent", [DoNothingAgent, RandomToolAgent])
def test_floor_agents_score_zero(agent: type) -> None:
    env = make(ENV_ID, split="test")
    tasks = make_tasks("test").tasks[::25]
    rewards = [rollout(env, agent(), seed=i, task_id=t.id).reward for i, t in enumerate(tasks)]
    env.close()
    assert len(rewards) == 20 and sum(rewards) == 0


def test_editing_the_tests_does_not_pass_a_bug_fix(env: WorkspaceEnv) -> None:
    task = _first("train", "fix_bug")
    test_path = task.goal.intents[0].slots["tests"]
    stub = "import unittest\n\nclass T(unittest.TestCase):\n    def test_ok(self):\n        pass\n"
    verdict = _play(
        env, task, [_call("write_file", path=test_path, content=stub), _call("run_tests")]
    )
    assert not verdict.state_match and verdict.reward == 0.0


def test_forged_exit_and_shadowed_stdlib_do_not_pass(env: WorkspaceEnv) -> None:
    task = _first("train", "fix_bug")
    path = task.goal.intents[0].slots["path"]
    gold = next(a for a in task.gold_actions if a.name == "write_file")
    # The module exits 0 as soon as the tests import it, and prints what a runner might.
    forged = "import os\nprint('OK')\nos._exit(0)\n"
    assert not _play(env, task, [_call("write_file", path=path, content=forged)]).state_match
    # A workspace unittest.py that always succeeds must not shadow the real one.
    fake = "import sys\nprint(sys.stdin.read())\nsys.exit(0)\n"
    assert not _play(env, task, [_call("write_file", path="unittest.py", content=fake)]).state_match
    # ... and with the real fix beside it, the fix still counts.
    actions = [
        _call("write_file", path="unittest.py", content=fake),
        _call("write_file", **gold.arguments),
    ]
    assert _play(env, task, actions).reward == 1.0


def test_rename_must_leave_no_old_name(env: WorkspaceEnv) -> None:
    task = _first("train", "rename_function")
    slots = task.goal.intents[0].slots
    writes = [a for a in task.gold_actions if a.name == "write_file"]
    assert _play(env, task, [_call("write_file", **w.arguments) for w in writes]).reward == 1.0
    module = writes[0].arguments
    aliased = dict(module, content=f"{module['content']}\n{slots['old']} = {slots['new']}\n")
    actions = [_call("write_file", **aliased), _call("write_file", **writes[1].arguments)]
    assert not _play(env, task, actions).state_match
    # Renaming only the definition breaks the caller: the project's own tests catch it.
    assert not _play(env, task, [_call("write_file", **writes[0].arguments)]).state_match


def test_script_is_run_fresh_by_the_verifier(env: WorkspaceEnv) -> None:
    task = _first("train", "write_script")
    check = make_tasks("train").projects[task.id].checks[0]
    # Writing the right JSON by hand, with a script that does nothing, fails.
    actions = [
        _call("write_file", path=check.output, content=json.dumps(check.expected)),
        _call("write_file", path=check.script, content="pass\n"),
    ]
    assert not _play(env, task, actions).state_match
    # A script that overwrites the data before summarising it is run on the original data.
    gold = next(a for a in task.gold_actions if a.name == "write_file")
    sales = task.goal.intents[0].slots["path"]
    sabotage = _call("write_file", path=sales, content="date,region,product,units,unit_price\n")
    assert _play(env, task, [sabotage, _call("write_file", **gold.arguments)]).reward == 1.0


def test_reported_value_must_be_right_and_come_from_the_tools(env: WorkspaceEnv) -> None:
    task = _first("train", "csv_stat")
    answer = task.required_outputs[0]
    run = next(a for a in task.gold_actions if a.name == "run_python")
    assert (
        _play(env, task, [_call("run_python", **run.arguments)], f"It is {answer}.").reward == 1.0
    )
    assert (
        _play(env, task, [_call("run_python", **run.arguments)], "It is 123456789.").reward == 0.0
    )
    words = next(
        t
        for t in make_tasks("train").tasks
        if t.family == "answer_from_files" and not t.required_outputs[0].isdigit()
    )
    guessed = _play(env, words, [], f"It is {words.required_outputs[0]}.")
    assert guessed.reward == 0.0 and not all(guessed.outputs.values())


def test_run_tests_reports_failures_and_sees_every_edit(env: WorkspaceEnv) -> None:
    task = _first("train", "fix_bug")
    env.reset(seed=0, options={"task_id": task.id})
    obs, *_ = env.step(_call("run_tests"))
    first = json.loads(obs.messages[0].text)
    assert first["passed"] is False and "FAIL" in first["report"]
    assert " in 0." not in first["report"]  # no timings: an episode replays byte for byte
    gold = next(a for a in task.gold_actions if a.name == "write_file")
    env.step(_call("write_file", **gold.arguments))  # same second, maybe same size: no stale .pyc
    obs, *_ = env.step(_call("run_tests"))
    assert json.loads(obs.messages[0].text)["passed"] is True


def test_each_episode_gets_a_fresh_sandbox_closed_after(env: WorkspaceEnv) -> None:
    task = _first("train", "csv_stat")
    env.reset(seed=0, options={"task_id": task.id})
    first = env.state.sandbox
    env.step(_call("write_file", path="left_over.txt", content="x"))
    env.reset(seed=0, options={"task_id": task.id})
    assert first.closed and not first.workspace.exists()
    assert "left_over.txt" not in env.state.sandbox.list_files()
    trajectory = rollout(env, ScriptedExpert(), seed=0, task_id=task.id)
    assert trajectory.reward == 1.0 and env.state.sandbox.closed  # released after the episode
    for t in make_tasks("train").tasks[:40]:
        rollout(env, RandomToolAgent(), seed=1, task_id=t.id)
    env.close()
    assert orphans.left_by(orphans.owner_tag()).empty  # this process's own: no workspace or mount


@pytest.mark.skipif(docker_available() is not None, reason=str(docker_available()))
def test_docker_backend_runs_the_same_tasks() -> None:
    env = make(ENV_ID, split="test", sandbox="docker")
    tasks = [_first("test", f) for f in ("fix_bug", "write_script", "csv_stat")]
    rewards = [rollout(env, ScriptedExpert(), seed=0, task_id=t.id).reward for t in tasks]
    env.close()
    assert rewards == [1.0, 1.0, 1.0]
