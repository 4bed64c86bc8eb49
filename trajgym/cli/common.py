"""What every verb module shares: the console and the results table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def results_table(results: dict[str, dict[str, Any]], title: str, who: str, where: str) -> Table:
    """Success with its 95% CI for every agent and place it was evaluated (report JSON)."""
    table = Table(who, where, "tasks", "success", "95% CI", title=title)
    for agent, by_place in results.items():
        for place, m in by_place.items():
            low, high = m["success_ci95"]
            rate, interval = f"{m['success_rate']:.1%}", f"[{low:.1%}, {high:.1%}]"
            table.add_row(agent, place, str(m["tasks"]), rate, interval)
    return table
