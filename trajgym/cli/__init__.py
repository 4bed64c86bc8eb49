"""The ``trajgym`` command line: one typer app, one verb per stage.

Heavy libraries (litellm, torch) are imported inside the verbs that need them, so that
``trajgym envs`` starts in well under a second.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version
from typing import Annotated, NoReturn

import typer

from trajgym.cli import data, explore, mcp, new_env, serve, sources, synthesize, train, view
from trajgym.cli.common import console, print_error
from trajgym.cli.judge import judge_app
from trajgym.errors import InfrastructureError, TrajgymError

app = typer.Typer(
    help="Agentic trajectory synthesis and student training in verified tool environments.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,  # help texts print verbatim: `[default: ...]` is text, not markup
    pretty_exceptions_show_locals=False,  # a bug's traceback must not print a key it held
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


def _print_version(asked: bool) -> None:
    if asked:
        console.print(f"trajgym {version('trajgym')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Agentic trajectory synthesis and student training in verified tool environments."""


def main() -> NoReturn:
    """Entry point: exit 2 with a short message for a user's mistake, 1 for failed work.

    Only a bug in trajgym shows a traceback. typer (0.29, pinned) raises its own copies of
    click's exceptions, all ``typer.TyperException``; ``standalone_mode=False`` hands them
    here instead of to typer's handler, which would print a traceback for ours.
    """
    try:
        code = app(prog_name="trajgym", standalone_mode=False)
    except typer.TyperException as e:
        _usage_error(e)
    except TrajgymError as e:
        print_error(str(e))
        raise SystemExit(2) from None
    except InfrastructureError as e:
        print_error(f"{type(e).__name__}: {e}")
        raise SystemExit(1) from None
    except (typer.Abort, KeyboardInterrupt):
        print_error("interrupted")
        raise SystemExit(130) from None
    # A verb's typer.Exit(code) comes back as its code outside standalone mode.
    raise SystemExit(code if isinstance(code, int) else 0)


def _usage_error(e: typer.TyperException) -> NoReturn:
    """Click's message (its "Did you mean ...?" kept) and where to read the usage."""
    ctx = getattr(e, "ctx", None)
    if type(e).__name__ == "NoArgsIsHelpError":  # a bare group: its help is the answer
        console.print(e.format_message(), soft_wrap=True)
    else:
        hint = f"Run '{ctx.command_path} --help' for its usage." if ctx is not None else None
        print_error(e.format_message(), hint)
    raise SystemExit(e.exit_code)
