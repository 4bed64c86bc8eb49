"""The ``trajgym`` command line: one typer app, one verb per stage.

Heavy libraries (litellm, torch) are imported inside the verbs that need them, so that
``trajgym envs`` starts in well under a second.
"""

from __future__ import annotations

import json
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
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. trajgym/Retail-v1.")],
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
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. trajgym/Retail-v1.")],
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
    from trajgym.rollouts.rollout import rollout as run_episode
    from trajgym.views.render import print_summary, print_trajectory

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


@app.command()
def generate(
    config: Annotated[str | None, typer.Argument(help="YAML config (GenerateConfig).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: a.b=value.")
    ] = None,
    env: Annotated[list[str] | None, typer.Option(help="Environment id (repeatable).")] = None,
    split: Annotated[str | None, typer.Option(help="train, test or ood.")] = None,
    num_tasks: Annotated[int | None, typer.Option(help="First N tasks per env.")] = None,
    samples: Annotated[int | None, typer.Option(help="Episodes per task.")] = None,
    teacher_model: Annotated[
        str | None, typer.Option(help="litellm model for the assistant (default: expert).")
    ] = None,
    api_base: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL.")] = None,
    tool_mode: Annotated[str | None, typer.Option(help="native or text.")] = None,
    user_model: Annotated[
        str | None, typer.Option(help="litellm model for the user (default: scripted).")
    ] = None,
    user_api_base: Annotated[str | None, typer.Option(help="Base URL for the user model.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Episodes in flight.")] = None,
    ramp: Annotated[
        float | None,
        typer.Option(
            help="Start the first episodes over this many seconds (about one call's "
            "latency avoids a burst)."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Base seed.")] = None,
    output: Annotated[str | None, typer.Option("--output", "-o", help="JSONL store.")] = None,
    record: Annotated[
        str | None, typer.Option(help="Record every LLM call into this cassette (JSONL).")
    ] = None,
    replay: Annotated[
        str | None, typer.Option(help="Answer every LLM call from this cassette, offline.")
    ] = None,
    backend: Annotated[
        str | None, typer.Option(help="local (threads here) or ray (a Ray cluster).")
    ] = None,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: start a local one).")
    ] = None,
) -> None:
    """Generate trajectories concurrently into a resumable JSONL store.

    Re-running the same command after a crash resumes: episodes already stored are skipped.
    """
    from trajgym.config import load_config
    from trajgym.rollouts.config import GenerateConfig
    from trajgym.rollouts.generate import generate as run_generation

    flags = {
        "split": split,
        "num_tasks": num_tasks,
        "samples_per_task": samples,
        "concurrency": concurrency,
        "ramp_s": ramp,
        "seed": seed,
        "output": output,
        "record": record,
        "replay": replay,
        "backend": backend,
        "ray_address": address,
        "teacher.tool_mode": tool_mode,
        "teacher.llm.api_base": api_base,
        "user.llm.api_base": user_api_base,
    }
    overrides = [f"{k}={v}" for k, v in flags.items() if v is not None]
    if env:
        overrides.append(f"envs={json.dumps(env)}")
    if teacher_model:
        overrides += ["teacher.kind=litellm", f"teacher.llm.model={teacher_model}"]
    if user_model:
        overrides += ["user.kind=litellm", f"user.llm.model={user_model}"]
    cfg = load_config(GenerateConfig, config, [*overrides, *(set_ or [])])
    report = run_generation(cfg, show_progress=True)
    table = Table("", "value", title=f"generation into {cfg.output}")
    for key, value in report.as_dict().items():
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def export(
    inputs: Annotated[list[str], typer.Argument(help="Trajectory JSONL files.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output file or folder.")],
    fmt: Annotated[str, typer.Option("--format", help="hf, openai or sharegpt.")] = "hf",
    split: Annotated[list[str] | None, typer.Option(help="Keep this split (repeatable).")] = None,
    provenance: Annotated[
        list[str] | None, typer.Option(help="Keep this provenance kind (repeatable).")
    ] = None,
    min_reward: Annotated[float | None, typer.Option(help="Keep rewards >= this.")] = None,
    status: Annotated[str, typer.Option(help="Keep this status: ok, error or any.")] = "ok",
) -> None:
    """Export trajectories for training: a HF dataset, OpenAI fine-tuning JSONL, or ShareGPT."""
    from trajgym.train.export import ExportFilter
    from trajgym.train.export import export as run_export

    if fmt not in ("hf", "openai", "sharegpt"):
        raise TrajgymError(f"Unknown format '{fmt}'. Choose hf, openai or sharegpt.")
    keep = ExportFilter(
        splits=split,
        provenance=provenance,
        min_reward=min_reward,
        status=None if status == "any" else [status],
    )
    counts = run_export(inputs, output, fmt, keep)  # type: ignore[arg-type]
    total = sum(counts.values())
    console.print(f"exported {total} trajectories to {output} ({fmt}); by split: {counts}")


@app.command("eval")
def evaluate(
    config: Annotated[str | None, typer.Argument(help="YAML config (GenerateConfig).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: a.b=value.")
    ] = None,
    agent: Annotated[
        str | None, typer.Option(help="expert, nothing, random, student or litellm.")
    ] = None,
    student: Annotated[str | None, typer.Option(help="Student model path or id.")] = None,
    adapter: Annotated[str | None, typer.Option(help="peft adapter for the student.")] = None,
    split: Annotated[
        str | None, typer.Option(help="train, test or ood [default: the config's, else test].")
    ] = None,
    num_tasks: Annotated[int | None, typer.Option(help="First N tasks per env.")] = None,
    k: Annotated[int | None, typer.Option(help="Samples per task (pass@k, pass^k).")] = None,
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Trajectories JSONL [default: the config's, else runs/eval/trajectories.jsonl].",
        ),
    ] = None,
) -> None:
    """Evaluate an agent in an environment: success (95% CI), pass@k, pass^k, breakdowns.

    The trajectories are kept (resumable, like generate); the metrics go to <output>.eval.json.
    """
    from trajgym.config import load_config
    from trajgym.records.store import read_trajectories
    from trajgym.rollouts.config import GenerateConfig
    from trajgym.rollouts.generate import generate as run_generation
    from trajgym.train.evaluate import summarize

    # A flag given wins over the config file; without a file, evaluation defaults apply.
    defaults = {} if config else {"split": "test", "output": "runs/eval/trajectories.jsonl"}
    flags = defaults | {
        "teacher.kind": agent,
        "teacher.student": student,
        "teacher.adapter": adapter,
        "num_tasks": num_tasks,
        "samples_per_task": k,
    }
    flags |= {key: value for key, value in {"split": split, "output": output}.items() if value}
    overrides = [f"{key}={value}" for key, value in flags.items() if value is not None]
    cfg = load_config(GenerateConfig, config, [*overrides, *(set_ or [])])
    run_generation(cfg, show_progress=True)
    metrics = summarize(read_trajectories(cfg.output), cfg.samples_per_task)
    cfg.output.with_suffix(".eval.json").write_text(json.dumps(metrics, indent=1))
    table = Table("metric", "value", title=f"{cfg.teacher.kind} on {cfg.split}")
    for key, value in metrics.items():
        if not key.startswith("by_"):
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    families = Table("family", "episodes", "success")
    for family, row in metrics["by_family"].items():
        families.add_row(family, str(row["episodes"]), f"{row['success_rate']:.0%}")
    console.print(families)


@app.command("run")
def run_pipeline(
    config: Annotated[str, typer.Argument(help="YAML config (PipelineConfig).")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: a.b=value.")
    ] = None,
    smoke: Annotated[
        bool, typer.Option(help="The config's small size (its `smoke` overrides), for CI.")
    ] = False,
) -> None:
    """The main job: harvest with the teacher, SFT the student, evaluate base vs trained.

    Writes trajectories, the adapter, report.md / report.json and success.png under the
    config's output_dir; re-running resumes.
    """
    from trajgym.cli.sources import results_table
    from trajgym.config import load_config
    from trajgym.experiments.pipeline import PipelineConfig, run

    cfg = load_config(PipelineConfig, config, set_ or [])
    if smoke:
        cfg = load_config(PipelineConfig, config, [*cfg.smoke, *(set_ or [])])
    report = run(cfg)
    console.print(results_table(report["results"], cfg.env, "agent", "split"))
    console.print(f"Report: {cfg.output_dir / 'report.md'}")


train_app = typer.Typer(help="Train students on trajectories.", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("sft")
def train_sft(
    config: Annotated[str | None, typer.Argument(help="YAML config (SFTConfig).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: a.b=value.")
    ] = None,
    data: Annotated[list[str] | None, typer.Option(help="Trajectory JSONL (repeatable).")] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where to write the run.")] = None,
) -> None:
    """Supervised fine-tuning with loss on the assistant's tokens only (LoRA or full).

    Resumes from output_dir/checkpoint when it exists; runs under `accelerate launch` too.
    """
    from trajgym.config import load_config
    from trajgym.train.sft import SFTConfig, train

    overrides = list(set_ or [])
    if data:
        overrides.append(f"data={json.dumps(data)}")
    if output_dir:
        overrides.append(f"output_dir={output_dir}")
    cfg = load_config(SFTConfig, config, overrides)
    summary = train(cfg)
    first, last = summary["losses"][0], summary["losses"][-1]
    console.print(
        f"trained {summary['steps']} steps on {summary['examples']} trajectories "
        f"({summary['tokens']:,} tokens); loss {first:.3f} -> {last:.3f}; saved {summary['final']}"
    )


@train_app.command("rl")
def train_rl(
    config: Annotated[str | None, typer.Argument(help="YAML config (RLConfig).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: a.b=value.")
    ] = None,
    output_dir: Annotated[str | None, typer.Option(help="Where to write the run.")] = None,
) -> None:
    """Multi-turn GRPO in the environments, rewarded by their verification (LoRA or full).

    Resumes from output_dir/checkpoint when it exists; runs under `accelerate launch` too.
    """
    from trajgym.config import load_config
    from trajgym.train.rl import RLConfig, train

    overrides = list(set_ or [])
    if output_dir:
        overrides.append(f"output_dir={output_dir}")
    summary = train(load_config(RLConfig, config, overrides))
    history = summary["history"]
    if history:
        first, last = history[0], history[-1]
        console.print(
            f"{summary['steps']} GRPO steps; reward {first['reward']:.3f} -> {last['reward']:.3f}, "
            f"success {first['success']:.1%} -> {last['success']:.1%}; saved {summary['final']}"
        )


def _register_more_verbs() -> None:
    from trajgym.cli import sources as cli_sources
    from trajgym.cli import view as cli_view
    from trajgym.cli.judge import judge_app

    app.add_typer(judge_app, name="judge")
    app.command()(cli_sources.selfgen)
    app.command()(cli_sources.label)
    app.command()(cli_sources.compare)
    app.command()(cli_view.view)


_register_more_verbs()


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
