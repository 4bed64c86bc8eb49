"""Readable terminal rendering of trajectories (rich)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from trajgym.records.schema import Message, Trajectory

_STYLE = {"user": "cyan", "assistant": "green", "tool": "yellow", "system": "dim"}
_CLIP = 600


def print_trajectory(console: Console, trajectory: Trajectory, show_system: bool = False) -> None:
    """Print one conversation, then how it was verified.

    Everything from the trajectory is printed as plain text (rich's Text, never markup): a
    `[low, high]` in a tool result or in code must reach the reader as it was recorded.
    """
    t = trajectory
    console.print(
        Text.assemble(
            (t.env_id, "bold"),
            " task ",
            (t.task_id, "bold"),
            f" ({t.family}), persona {t.persona}, seed {t.seed}",
        )
    )
    for message in t.messages:
        if message.role == "system" and not show_system:
            continue
        console.print(
            Panel(
                Text(_body(message)),
                title=Text(_title(message)),
                title_align="left",
                border_style=_STYLE[message.role],
            )
        )
    verdict = t.verdict
    outcome = Text("success", "green") if t.success else Text("failure", "red")
    if t.status == "error":
        outcome = Text.assemble(("error", "red"), f": {t.error}")
    console.print(Text.assemble(outcome, f"; reward {t.reward}; ended by {t.termination}"))
    if verdict is not None:
        console.print(
            Text(
                f"state matches gold: {verdict.state_match}; outputs told: {verdict.outputs}; "
                f"violations: {list(verdict.violations) or 'none'}"
            )
        )


def print_summary(console: Console, trajectories: Sequence[Trajectory]) -> None:
    """Success per task family, and overall."""
    by_family: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajectories:
        by_family[t.family].append(t)
    table = Table("family", "episodes", "successes", "rate", "errors")
    for family, group in sorted(by_family.items()):
        ok = sum(t.success for t in group)
        table.add_row(
            Text(family),
            str(len(group)),
            str(ok),
            f"{ok / len(group):.0%}",
            str(sum(t.status == "error" for t in group)),
        )
    total = sum(t.success for t in trajectories)
    table.add_row(
        Text("all", "bold"),
        str(len(trajectories)),
        Text(str(total), "bold"),
        f"{total / max(1, len(trajectories)):.0%}",
        str(sum(t.status == "error" for t in trajectories)),
    )
    console.print(table)


def _title(message: Message) -> str:
    if message.role == "tool":
        return f"tool result: {message.name}"
    return message.role


def _body(message: Message) -> str:
    parts = []
    if message.content:
        text = message.content
        cut = len(text) - _CLIP
        parts.append(text if cut <= 0 else f"{text[:_CLIP]} ... ({cut} more characters)")
    for call in message.tool_calls or ():
        parts.append(f"-> {call.function.name}({call.function.arguments})")
    return "\n".join(parts) or "(empty)"
