"""``trajgym view``: trajectory files as one self-contained HTML page.

Registered on the one ``trajgym`` app in :mod:`trajgym.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trajgym.cli.common import console


def view(
    files: Annotated[
        list[Path], typer.Argument(help="Trajectory JSONL files, or folders of them.")
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="The HTML page to write.")] = Path(
        "trajectories.html"
    ),
    title: Annotated[
        str | None, typer.Option(help="Page title.  [default: the file names]")
    ] = None,
) -> None:
    """Write FILES as one HTML page to browse: filters, conversations, verdicts, state diffs.

    The page is self-contained (no network: styles, script and data are inline); open it in
    any browser.
    """
    from trajgym.views.viewer import write_report

    count = write_report(files, output, title)  # a missing or empty file: a TrajgymError
    size_kb = output.stat().st_size / 1024
    console.print(f"wrote {output} ({count} trajectories, {size_kb:,.0f} KiB)", soft_wrap=True)
