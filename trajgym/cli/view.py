"""``trajgym view``: trajectory files as one self-contained HTML page.

Registered on the one ``trajgym`` app in :mod:`trajgym.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from trajgym.errors import TrajgymError

console = Console()
err_console = Console(stderr=True)


def view(
    files: Annotated[
        list[Path], typer.Argument(help="Trajectory JSONL files, or folders of them.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML page to write.")] = Path(
        "trajectories.html"
    ),
    title: Annotated[str | None, typer.Option(help="Page title [default: the file names].")] = None,
) -> None:
    """Write FILES as one HTML page to browse: filters, conversations, verdicts, state diffs.

    The page is self-contained (no network: styles, script and data are inline); open it in
    any browser.
    """
    from trajgym.views.viewer import write_report

    try:
        count = write_report(files, output, title)
    except TrajgymError as e:  # a missing file or a malformed line: say which, no traceback
        err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    size_kb = output.stat().st_size / 1024
    console.print(
        f"wrote {escape(str(output))} ({count} trajectories, {size_kb:,.0f} KiB)",
        highlight=False,
        soft_wrap=True,
    )
