"""What every verb module shares: the consoles, the error line and the results table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Column, Table
from rich.text import Text

if TYPE_CHECKING:
    from trajgym.rollouts.progress import GenerateReport

# No markup anywhere: what the verbs print is mostly data (transcripts, tool results, code,
# paths, error messages), and rich would eat any `[...]` in it. Styles come from Text objects.
console = Console(markup=False, highlight=False)
# One split default for every verb that takes one.
SPLIT_HELP = (
    "train, test or ood. Every verb defaults to train, the tasks you look at, play and train "
    "on; test and ood are held out for evaluation, so they are used only when asked for."
)
err_console = Console(stderr=True, markup=False, highlight=False)


def print_error(message: str, hint: str | None = None) -> None:
    """An error as one line (and an optional hint line) on stderr, printed verbatim."""
    err_console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    if hint:
        err_console.print(hint, soft_wrap=True)


def table(*headers: str | Column, title: str | None = None) -> Table:
    """A table whose cells and headers wrap (fold) rather than being cut to fit the terminal."""
    columns = [h if isinstance(h, Column) else Column(h, overflow="fold") for h in headers]
    return Table(*columns, title=title)


def generation_table(report: GenerateReport, output: Path) -> Table:
    """This run's counts beside the store's: a resumed run writes little, the store holds all."""
    run, stored = report.as_dict(), report.stored
    out = table("", "this run", "in the store", title=f"generation into {output}")
    out.add_row("episodes", f"{run['written']} of {run['planned']}", str(stored["episodes"]))
    for key in ("ok", "errors", "successes"):
        out.add_row(key, str(run[key]), str(stored[key]))
    rates = [f"{r['success_rate_of_ok']:.1%}" if r["ok"] else "n/a" for r in (run, stored)]
    out.add_row("success rate of ok", *rates)
    usage = report.usage
    out.add_row("tokens", f"{usage.prompt_tokens + usage.completion_tokens:,}", "")
    out.add_row("cost", f"${usage.cost_usd:.4f}", "")
    faults = report.simulator.fault_rate
    out.add_row("simulator fault rate", f"{faults:.1%}", "")
    out.add_row("wall", f"{report.wall_s:.1f} s", "")
    return out


def results_table(results: dict[str, dict[str, Any]], title: str, who: str, where: str) -> Table:
    """Success with its 95% CI for every agent and place it was evaluated (report JSON)."""
    out = table(who, where, "tasks", "success", "95% CI", title=title)
    for agent, by_place in results.items():
        for place, m in by_place.items():
            low, high = m["success_ci95"]
            rate, interval = f"{m['success_rate']:.1%}", f"[{low:.1%}, {high:.1%}]"
            out.add_row(agent, place, str(m["tasks"]), rate, interval)
    return out
