"""``trajgym synthesize ENV``: tasks an LLM proposes, kept only when execution accepts them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trajgym.cli import common
from trajgym.cli.common import SPLIT_HELP, console
from trajgym.records.schema import Split


def synthesize(
    env_id: Annotated[str, typer.Argument(help="Environment id, e.g. trajgym/RetailLite-v0.")],
    model: Annotated[str, typer.Option(help="litellm model that proposes blueprints.")],
    n: Annotated[int, typer.Option("-n", help="Blueprints to ask for.")] = 20,
    output: Annotated[Path, typer.Option("--output", "-o", help="Task file to write.")] = Path(
        "runs/synth/tasks.jsonl"
    ),
    split: Annotated[
        Split, typer.Option(help=f"{SPLIT_HELP} The tasks get the split's users.")
    ] = "train",
    api_base: Annotated[str | None, typer.Option(help="OpenAI-compatible base URL.")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Variable holding the key.")] = None,
    max_retries: Annotated[int, typer.Option(help="Corrections per blueprint.")] = 2,
    reviewer_model: Annotated[str | None, typer.Option(help="An LLM reviewer, if any.")] = None,
    temperature: Annotated[float, typer.Option(help="The proposer's temperature.")] = 0.7,
    max_tokens: Annotated[int, typer.Option(help="Longest blueprint reply.")] = 1024,
    seed: Annotated[int, typer.Option(help="Which examples and families, in which order.")] = 0,
) -> None:
    """Synthesize tasks an LLM proposes, keeping those that execution accepts.

    Blueprints are grounded on the world's records; each is checked by execution (and by the
    reviewer), a rejected one is retried with the reason. Accepted tasks go to a task file
    that `--tasks` plays, with a report of why the rest were rejected.
    """
    from trajgym.llm.client import LLMConfig
    from trajgym.rollouts.progress import generation_progress
    from trajgym.rollouts.synthesis import SynthesisConfig, SynthesisReport
    from trajgym.rollouts.synthesis import synthesize as run

    llm = {"api_base": api_base, "api_key_env": api_key_env, "max_tokens": max_tokens}
    config = SynthesisConfig(
        env=env_id,
        split=split,
        n=n,
        llm=LLMConfig(model=model, temperature=temperature, seed=seed, **llm),
        reviewer=LLMConfig(model=reviewer_model, **llm) if reviewer_model else None,
        max_retries=max_retries,
        seed=seed,
        output=output,
    )
    with generation_progress("synthesizing", show=True) as progress:
        bar = progress.add_task("blueprints", total=n, stats="")

        def advance(report: SynthesisReport) -> None:
            stats = f"accepted {report.accepted}  proposals {report.proposals}"
            progress.update(bar, advance=1, stats=stats)

        report = run(config, on_blueprint=advance)
    table = common.table("", "value", title=f"synthesis into {output}")
    for key, value in report.as_dict().items():
        if key != "reasons":
            table.add_row(key, str(value))
    console.print(table)
