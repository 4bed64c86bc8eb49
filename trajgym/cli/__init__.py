"""The ``trajgym`` command line: one typer app, one verb per stage.

Heavy libraries (litellm, torch) are imported inside the verbs that need them, so that
``trajgym envs`` starts in well under a second.
"""

from __future__ import annotations

from collections.abc import Callable

import click
import typer

from trajgym.cli import data, explore, mcp, new_env, serve, sources, synthesize, train, view
from trajgym.cli.common import console
from trajgym.cli.judge import judge_app
from trajgym.errors import TrajgymError

app = typer.Typer(
    help="Agentic trajectory synthesis and student training in verified tool environments.",
    no_args_is_help=True,
    add_completion=False,
)
VERBS: dict[str, Callable[..., None]] = {
    "envs": explore.envs,
    "tasks": explore.tasks,
    "rollout": explore.rollout,
    "generate": data.generate,
    "eval": data.evaluate,
    "export": data.export,
    "run": train.run_pipeline,
    "selfgen": sources.selfgen,
    "label": sources.label,
    "compare": sources.compare,
    "view": view.view,
    "new-env": new_env.new_env,
    "synthesize": synthesize.synthesize,
    "mcp": mcp.mcp,
    "serve": serve.serve,
}
for name, verb in VERBS.items():
    app.command(name)(verb)
app.add_typer(train.train_app, name="train")
app.add_typer(judge_app, name="judge")


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
