"""Verbs to look around: ``envs``, ``tasks``, ``rollout``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, cast

import typer
from rich.table import Column

from trajgym.agents.base import Agent
from trajgym.cli import common
from trajgym.cli.common import SPLIT_HELP, console
from trajgym.errors import TrajgymError
from trajgym.records.schema import SPLITS, Split

AGENTS = ("expert", "nothing", "random")
AgentName = Literal["expert", "nothing", "random"]
TaskFile = Annotated[
    Path | None,
    typer.Option("--tasks", help="Play this JSONL task file's tasks instead (checked first)."),
]


def envs() -> None:
    """List the registered environments with their task counts per split."""
    from trajgym.envs import env_ids, tool_env
    from trajgym.records.schema import SPLITS

    table = common.table("environment", *SPLITS, "tools")
    for env_id in env_ids():
        env = tool_env(env_id)
        counts = [str(len(env.tasks(s))) for s in SPLITS]
        table.add_row(env_id, *counts, str(len(env.toolkit.tools)))
        env.close()
    console.print(table)


def tasks(
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. trajgym/Retail-v1.")],
    split: Annotated[Split, typer.Option(help=SPLIT_HELP)] = "train",
    family: Annotated[str | None, typer.Option(help="Only this task family.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many tasks.")] = 20,
    tasks_file: TaskFile = None,
) -> None:
    """List an environment's tasks: id, family, difficulty and the user's opening request.

    With --tasks, a task file's tasks, after checking every one of them (gold actions run
    cleanly on a fresh state, and the scripted expert solves it).
    """
    from trajgym.envs import tool_env

    if tasks_file is not None:
        env_id = _checked_task_file(env_id, tasks_file)
    env = tool_env(env_id, split=split)
    found = [t for t in env.tasks() if family is None or t.family == family]
    table = common.table(
        Column("task id", no_wrap=True), "family", "difficulty", "opening request"
    )
    for task in found[:limit]:
        table.add_row(task.id, task.family, str(task.difficulty), task.goal.intents[0].request)
    console.print(table)
    by_family = Counter(t.family for t in found)
    console.print(
        f"{len(found)} tasks; by family: "
        + ", ".join(f"{f} {n}" for f, n in sorted(by_family.items()))
    )


def rollout(
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. trajgym/Retail-v1.")],
    agent: Annotated[
        AgentName, typer.Option(help="The scripted expert, or a floor baseline.")
    ] = "expert",
    task: Annotated[
        str | None, typer.Option(help="Task id (default: drawn from the seed).")
    ] = None,
    split: Annotated[
        Split | None, typer.Option(help=f"{SPLIT_HELP} With --task: the task's own split.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Episode seed.")] = 0,
    persona: Annotated[str | None, typer.Option(help="Simulated user persona.")] = None,
    n: Annotated[int, typer.Option(help="Run the first N tasks of the split and summarise.")] = 0,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write trajectories as JSONL.")
    ] = None,
    tasks_file: TaskFile = None,
) -> None:
    """Run an agent in an environment and print the conversation (or, with --n, a summary)."""
    from trajgym.envs import make, tasks_of
    from trajgym.rollouts.rollout import rollout as run_episode
    from trajgym.views.render import print_summary, print_trajectory

    if tasks_file is not None:
        env_id = _checked_task_file(env_id, tasks_file)
    split = split or _split_of(task) or "train"
    env = make(env_id, split=split)
    if n:
        task_ids: list[str | None] = [t.id for t in tasks_of(env_id, split)[:n]]
    else:
        task_ids = [task] if task else [None]
    results = []
    for i, task_id in enumerate(task_ids):
        results.append(
            run_episode(env, _make_agent(agent), seed=seed + i, task_id=task_id, persona=persona)
        )
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w") as f:
            for t in results:
                f.write(t.model_dump_json() + "\n")
    if n:
        print_summary(console, results)
    else:
        print_trajectory(console, results[0])


def _split_of(task_id: str | None) -> Split | None:
    """The split a task id names (ids start with it: test-cancel_pending_order-00003)."""
    prefix = (task_id or "").split("-", 1)[0]
    return cast(Split, prefix) if prefix in SPLITS else None


def _checked_task_file(env_id: str, path: Path) -> str:
    """The id a task file plays under, once every task in it checks out."""
    from trajgym.envs import tasks_of
    from trajgym.envs.task_files import register_task_file
    from trajgym.records.schema import SPLITS
    from trajgym.rollouts.task_check import check_expert_solves

    played = register_task_file(env_id, path)
    check_expert_solves(played)
    n = sum(len(tasks_of(played, s)) for s in SPLITS)
    console.print(f"{path}: {n} tasks check out (gold actions run; the expert solves each).")
    return played


def _make_agent(name: str) -> Agent:
    from trajgym.agents.baselines import DoNothingAgent, RandomToolAgent
    from trajgym.agents.expert import ScriptedExpert

    makers: dict[str, Callable[[], Agent]] = {
        "expert": ScriptedExpert,
        "nothing": DoNothingAgent,
        "random": RandomToolAgent,
    }
    if name not in makers:
        raise TrajgymError(f"Unknown agent '{name}'. Choose one of: {', '.join(AGENTS)}.")
    return makers[name]()
