"""The ``trajgym`` command line: one typer app, one verb per stage.

Heavy libraries (litellm, torch) are imported inside the verbs that need them, so that
``trajgym envs`` starts in well under a second.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.console import Console
from rich.table import Column, Table

from trajgym.agents.base import Agent
from trajgym.errors import TrajgymError

app = typer.Typer(
    help="Agentic trajectory synthesis and student training in verified tool environments.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

AGENTS = ("expert", "nothing", "random")


@app.command()
def envs() -> None:
    """List the registered environments with their task counts per split."""
    from trajgym.envs import env_ids, make

    table = Table("environment", "train", "test", "ood", "tools")
    for env_id in env_ids():
        env = make(env_id).unwrapped
        counts = [str(len(env.tasks(s))) for s in ("train", "test", "ood")]  # type: ignore[attr-defined]
        table.add_row(env_id, *counts, str(len(env.toolkit.tools)))  # type: ignore[attr-defined]
    console.print(table)


@app.command()
def tasks(
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. trajgym/Retail-v0.")],
    split: Annotated[str, typer.Option(help="train, test or ood.")] = "train",
    family: Annotated[str | None, typer.Option(help="Only this task family.")] = None,
    limit: Annotated[int, typer.Option(help="Show at most this many tasks.")] = 20,
) -> None:
    """List an environment's tasks: id, family, difficulty and the user's opening request."""
    from trajgym.envs import make

    env = make(env_id, split=split).unwrapped
    found = [t for t in env.tasks(split) if family is None or t.family == family]  # type: ignore[attr-defined]
    table = Table(Column("task id", no_wrap=True), "family", "difficulty", "opening request")
    for task in found[:limit]:
        table.add_row(task.id, task.family, str(task.difficulty), task.goal.intents[0].request)
    console.print(table)
    by_family = Counter(t.family for t in found)
    console.print(
        f"{len(found)} tasks; by family: "
        + ", ".join(f"{f} {n}" for f, n in sorted(by_family.items()))
    )


@app.command()
def rollout(
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. trajgym/Retail-v0.")],
    agent: Annotated[str, typer.Option(help=f"One of: {', '.join(AGENTS)}.")] = "expert",
    task: Annotated[
        str | None, typer.Option(help="Task id (default: drawn from the seed).")
    ] = None,
    split: Annotated[str, typer.Option(help="train, test or ood.")] = "test",
    seed: Annotated[int, typer.Option(help="Episode seed.")] = 0,
    persona: Annotated[str | None, typer.Option(help="Simulated user persona.")] = None,
    n: Annotated[int, typer.Option(help="Run the first N tasks of the split and summarise.")] = 0,
    output: Annotated[
        str | None, typer.Option("--output", "-o", help="Write trajectories as JSONL.")
    ] = None,
) -> None:
    """Run an agent in an environment and print the conversation (or, with --n, a summary)."""
    from trajgym.envs import make
    from trajgym.trajectories.render import print_summary, print_trajectory
    from trajgym.trajectories.rollout import rollout as run_episode

    env = make(env_id, split=split)
    if n:
        all_tasks = env.unwrapped.tasks(split)  # type: ignore[attr-defined]
        task_ids: list[str | None] = [t.id for t in all_tasks[:n]]
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


def main() -> None:
    """Entry point: user errors print a one-line message and exit 2, without a traceback."""
    try:
        app(standalone_mode=False)
    except TrajgymError as e:
        console.print(f"[bold red]error:[/] {e}")
        raise SystemExit(2) from None
    except click.ClickException as e:
        e.show()
        raise SystemExit(e.exit_code) from None
    except click.exceptions.Exit as e:
        raise SystemExit(e.exit_code) from None
    except (click.Abort, KeyboardInterrupt):
        raise SystemExit(130) from None
