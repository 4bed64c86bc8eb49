"""Verbs that produce and move trajectories: ``generate``, ``eval``, ``export``."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import typer

from trajgym.cli import common
from trajgym.cli.common import console, generation_table
from trajgym.cli.options import Overrides, config_options
from trajgym.errors import ConfigError
from trajgym.rollouts.config import GenerateConfig

Format = Literal["hf", "openai", "sharegpt"]

ConfigFile = Annotated[str | None, typer.Argument(help="YAML config (GenerateConfig).")]
GENERATE_ALIASES = {
    "samples_per_task": "--samples",
    "ramp_s": "--ramp",
    "envs": "--env",
    "ray_address": "--address",
}


@config_options(GenerateConfig, aliases={**GENERATE_ALIASES, "output": "-o"})
def generate(
    config: ConfigFile = None,
    set_: Overrides = None,
    agent_model: Annotated[
        str | None, typer.Option(help="litellm model playing the assistant (default: expert).")
    ] = None,
    api_base: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL of the agent's model.")
    ] = None,
    tool_mode: Annotated[
        Literal["native", "text"] | None,
        typer.Option(help="How the agent's model calls tools: the API's tool calls, or text."),
    ] = None,
    user_model: Annotated[
        str | None, typer.Option(help="litellm model playing the user (default: scripted).")
    ] = None,
    user_api_base: Annotated[str | None, typer.Option(help="Base URL for the user model.")] = None,
    *,
    flags: dict[str, Any],
) -> None:
    """Generate trajectories concurrently into a resumable JSONL store.

    Every option below `--set` is a GenerateConfig field; `--set` reaches any nested one.
    Re-running the same command after a crash resumes: episodes already stored are skipped.
    """
    from trajgym.config import load_config
    from trajgym.rollouts.generate import generate as run_generation

    nested = {
        "agent.tool_mode": tool_mode,
        "agent.llm.api_base": api_base,
        "user.llm.api_base": user_api_base,
    }
    overrides = [f"{k}={v}" for k, v in nested.items() if v is not None]
    if agent_model:
        overrides += ["agent.kind=litellm", f"agent.llm.model={agent_model}"]
    if user_model:
        overrides += ["user.kind=litellm", f"user.llm.model={user_model}"]
    cfg = load_config(GenerateConfig, config, [*overrides, *(set_ or [])], flags)
    report = run_generation(cfg, show_progress=True)
    console.print(generation_table(report, cfg.output))


EVAL_OUTPUT = "runs/eval/trajectories.jsonl"


@config_options(
    GenerateConfig,
    aliases={"samples_per_task": "--k", "output": "-o", "envs": "--env"},
    shown_defaults={"split": "none, name one (or a config's)", "output": EVAL_OUTPUT},
)
def evaluate(
    config: ConfigFile = None,
    set_: Overrides = None,
    agent: Annotated[
        str | None, typer.Option(help="expert, nothing, random, student or litellm.")
    ] = None,
    student: Annotated[str | None, typer.Option(help="Student model path or id.")] = None,
    adapter: Annotated[str | None, typer.Option(help="peft adapter for the student.")] = None,
    *,
    flags: dict[str, Any],
) -> None:
    """Evaluate an agent in an environment: success (95% CI), pass@k, pass^k, breakdowns.

    Every option below `--adapter` is a GenerateConfig field. Evaluation names its split
    (--split test, ood or train, or a config file's): a result must say what it measured.
    The trajectories are kept (resumable, like generate); the metrics go to
    <output>.eval.json.
    """
    from trajgym.config import load_config
    from trajgym.records.store import read_trajectories
    from trajgym.rollouts.generate import generate as run_generation
    from trajgym.rollouts.generate import plan
    from trajgym.train.evaluate import summarize

    given = config or "split" in flags or any(s.startswith("split=") for s in set_ or [])
    if not given:
        raise ConfigError(
            "Say which split to evaluate on: --split test (held-out tasks), --split ood "
            "(held-out phrasings and families) or --split train."
        )
    # A flag given wins over the config file; without a file, evaluation's output applies.
    defaults = {} if config else {"output": EVAL_OUTPUT}
    nested = {"agent.kind": agent, "agent.student": student, "agent.adapter": adapter}
    overrides = [f"{key}={value}" for key, value in nested.items() if value is not None]
    cfg = load_config(GenerateConfig, config, [*overrides, *(set_ or [])], defaults | flags)
    report = run_generation(cfg, show_progress=True)
    if not report.stored["episodes"]:
        raise ConfigError(f"No episodes to evaluate in {cfg.output}.")
    planned = set(plan(cfg))  # the store may hold other runs' episodes: measure this one's
    played = (t for t in read_trajectories(cfg.output) if t.key in planned)
    metrics = summarize(played, cfg.samples_per_task)
    cfg.output.with_suffix(".eval.json").write_text(json.dumps(metrics.as_json(), indent=1))
    table = common.table("metric", "value", title=f"{cfg.agent.kind} on {cfg.split}")
    for key, value in metrics.as_json().items():
        if not key.startswith("by_"):
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    families = common.table("family", "episodes", "success")
    for family, row in metrics.by_family.items():
        families.add_row(family, str(row.episodes), f"{row.success_rate:.0%}")
    console.print(families)


def export(
    inputs: Annotated[list[str], typer.Argument(help="Trajectory JSONL files.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output file or folder.")],
    fmt: Annotated[
        Format, typer.Option("--format", help="A datasets folder, or JSONL for OpenAI or ShareGPT.")
    ] = "hf",
    split: Annotated[list[str] | None, typer.Option(help="Keep this split (repeatable).")] = None,
    provenance: Annotated[
        list[str] | None, typer.Option(help="Keep this provenance kind (repeatable).")
    ] = None,
    min_reward: Annotated[float | None, typer.Option(help="Keep rewards >= this.")] = None,
    status: Annotated[
        Literal["ok", "error", "any"], typer.Option(help="Keep this status.")
    ] = "ok",
) -> None:
    """Export trajectories for training: a HF dataset, OpenAI fine-tuning JSONL, or ShareGPT."""
    from trajgym.train.export import ExportFilter
    from trajgym.train.export import export as run_export

    keep = ExportFilter(
        splits=split,
        provenance=provenance,
        min_reward=min_reward,
        status=None if status == "any" else [status],
    )
    counts = run_export(inputs, output, fmt, keep)
    total = sum(counts.values())
    console.print(f"exported {total} trajectories to {output} ({fmt}); by split: {counts}")
