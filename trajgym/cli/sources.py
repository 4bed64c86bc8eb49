"""CLI verbs for the other data sources and their comparison: selfgen, label, compare.

They are registered on the one ``trajgym`` app in :mod:`trajgym.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from trajgym.cli.common import console, results_table
from trajgym.cli.options import Overrides, config_options
from trajgym.rollouts.selfgen import SelfGenConfig


@config_options(SelfGenConfig, aliases={"output": "-o"})
def selfgen(
    config: Annotated[str | None, typer.Argument(help="YAML config (SelfGenConfig).")] = None,
    set_: Overrides = None,
    student: Annotated[str | None, typer.Option(help="Student model path or id.")] = None,
    adapter: Annotated[str | None, typer.Option(help="peft adapter for the student.")] = None,
    *,
    flags: dict[str, Any],
) -> None:
    """Self-generated data: the student plays k episodes per task; the verified ones are kept.

    Rejection sampling (expert-iteration style) with provenance `self`; every episode played
    is kept beside the output (`.rollouts.jsonl`) and the run resumes.
    """
    from trajgym.config import load_config
    from trajgym.rollouts.selfgen import self_generate

    nested = {"agent.student": student, "agent.adapter": adapter}
    overrides = [f"{k}={v}" for k, v in nested.items() if v is not None]
    cfg = load_config(SelfGenConfig, config, [*overrides, *(set_ or [])], flags)
    counts = self_generate(cfg)
    console.print(f"kept {counts['kept']} of {counts['rollouts']} episodes into {cfg.output}")
    console.print(counts)


def label(
    rollouts: Annotated[str, typer.Argument(help="The student's trajectories (JSONL).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Labelled JSONL.")],
    teacher_model: Annotated[
        str | None, typer.Option(help="litellm teacher model (default: the scripted expert).")
    ] = None,
    api_base: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL.")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Variable holding the key.")] = None,
    tool_mode: Annotated[
        Literal["native", "text"],
        typer.Option(help="How the teacher calls tools: the API's tool calls, or text."),
    ] = "native",
    limit: Annotated[int | None, typer.Option(help="Label at most this many.")] = None,
    concurrency: Annotated[int, typer.Option(help="Trajectories labelled at once.")] = 16,
) -> None:
    """On-policy distillation data: the teacher's action at every state the student reached.

    Writes the student's trajectories with the teacher's labels (provenance
    `on_policy_teacher`); `trajgym train sft` then trains on the labels. Resumable.
    """
    from trajgym.llm.client import LLMConfig
    from trajgym.records.store import require_input
    from trajgym.rollouts.config import AgentSpec
    from trajgym.rollouts.onpolicy import label_file

    require_input(rollouts)  # missing or empty: an error before anything is written
    teacher = AgentSpec()
    if teacher_model:
        llm = LLMConfig(model=teacher_model, api_base=api_base, api_key_env=api_key_env)
        teacher = AgentSpec(kind="litellm", llm=llm, tool_mode=tool_mode)
    counts = label_file(Path(rollouts), Path(output), teacher, limit, concurrency)
    console.print(counts)


def compare(
    config: Annotated[str, typer.Argument(help="YAML config (CompareConfig).")],
    set_: Overrides = None,
    smoke: Annotated[
        bool, typer.Option(help="The config's small size (its `smoke` overrides), for CI.")
    ] = False,
) -> None:
    """Teacher-harvested vs self-generated vs on-policy data, at a matched budget.

    Trains one student per source from the same base, evaluates each in- and out-of-
    distribution and on a held-out domain, and writes report.md / report.json / success.png
    to the config's results_dir (output_dir/results if unset). Re-running resumes.
    """
    from trajgym.config import load_config
    from trajgym.experiments.compare import CompareConfig, run_compare

    cfg = load_config(CompareConfig, config, set_ or [])
    if smoke:
        cfg = load_config(CompareConfig, config, [*cfg.smoke, *(set_ or [])])
    report = run_compare(cfg)
    console.print(results_table(report["results"], cfg.env, "student", "where"))
    console.print(f"Report: {cfg.results_root / 'report.md'}")
