"""Verbs that train: ``train sft``, ``train rl``, and the main job ``run``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from trajgym.cli.common import console, results_table
from trajgym.cli.options import Overrides, config_options
from trajgym.train.rl import RLConfig
from trajgym.train.sft import SFTConfig

train_app = typer.Typer(help="Train students on trajectories.", no_args_is_help=True)


@train_app.command("sft")
@config_options(SFTConfig)
def train_sft(
    config: Annotated[str | None, typer.Argument(help="YAML config (SFTConfig).")] = None,
    set_: Overrides = None,
    *,
    flags: dict[str, Any],
) -> None:
    """Supervised fine-tuning with loss on the assistant's tokens only (LoRA or full).

    Every option below `--set` is an SFTConfig field. Resumes from output_dir/checkpoint
    when it exists; runs under `accelerate launch` too.
    """
    from trajgym.config import load_config
    from trajgym.train.sft import train

    summary = train(load_config(SFTConfig, config, set_ or [], flags))
    first, last = summary["losses"][0], summary["losses"][-1]
    console.print(
        f"trained {summary['steps']} steps on {summary['examples']} trajectories "
        f"({summary['tokens']:,} tokens); loss {first:.3f} -> {last:.3f}; saved {summary['final']}"
    )


@train_app.command("rl")
@config_options(RLConfig)
def train_rl(
    config: Annotated[str | None, typer.Argument(help="YAML config (RLConfig).")] = None,
    set_: Overrides = None,
    *,
    flags: dict[str, Any],
) -> None:
    """Multi-turn GRPO in the environments, rewarded by their verification (LoRA or full).

    Every option below `--set` is an RLConfig field. Resumes from output_dir/checkpoint when
    it exists; runs under `accelerate launch` too.
    """
    from trajgym.config import load_config
    from trajgym.train.rl import train

    summary = train(load_config(RLConfig, config, set_ or [], flags))
    history = summary["history"]
    if history:
        first, last = history[0], history[-1]
        console.print(
            f"{summary['steps']} GRPO steps; reward {first['reward']:.3f} -> {last['reward']:.3f}, "
            f"success {first['success']:.1%} -> {last['success']:.1%}; saved {summary['final']}"
        )


def run_pipeline(
    config: Annotated[str, typer.Argument(help="YAML config (PipelineConfig).")],
    set_: Overrides = None,
    smoke: Annotated[
        bool, typer.Option(help="The config's small size (its `smoke` overrides), for CI.")
    ] = False,
) -> None:
    """The main job: harvest with the teacher, SFT the student, evaluate base vs trained.

    Writes trajectories, the adapter, report.md / report.json and success.png under the
    config's output_dir; re-running resumes.
    """
    from trajgym.config import load_config
    from trajgym.experiments.pipeline import PipelineConfig, run

    cfg = load_config(PipelineConfig, config, set_ or [])
    if smoke:
        cfg = load_config(PipelineConfig, config, [*cfg.smoke, *(set_ or [])])
    report = run(cfg)
    console.print(results_table(report["results"], cfg.env, "agent", "split"))
    console.print(f"Report: {cfg.output_dir / 'report.md'}")
