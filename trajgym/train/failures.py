"""What went wrong in failed episodes, read from their verdicts: the failure table.

Each failed episode gets the first reason that applies, in the order a reader would check:
an infrastructure error (not a task failure), running out of turns, a policy violation, the
final state (nothing changed, or the wrong change), then facts the user was never told.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from trajgym.records.schema import Trajectory


def failure_of(t: Trajectory) -> str | None:
    """Why an episode failed, in a few words; None if it succeeded."""
    if t.status == "error":
        return "infrastructure error"
    if t.success:
        return None
    v = t.verdict
    if t.termination == "truncated":
        return "ran out of turns"
    if v is None:
        return "no verdict"
    if v.violations:
        return f"policy: {v.violations[0]}"
    if not v.state_match:
        if t.termination == "transfer":
            return "transferred instead of acting"
        return "changed nothing" if not v.changes else "wrong change"
    untold = sorted(name for name, told in v.outputs.items() if not told)
    if untold:
        return "did not tell the user " + ", ".join(untold)
    return "other"


def failure_counts(trajectories: Iterable[Trajectory]) -> dict[str, tuple[int, Counter[str]]]:
    """Per family: episodes, and how many failed for each reason."""
    out: dict[str, tuple[int, Counter[str]]] = {}
    for t in trajectories:
        n, reasons = out.get(t.family, (0, Counter()))
        reason = failure_of(t)
        if reason is not None:
            reasons[reason] += 1
        out[t.family] = (n + 1, reasons)
    return dict(sorted(out.items()))


def failure_rows(name: str, place: str, trajectories: Iterable[Trajectory]) -> list[str]:
    """Markdown rows ``| agent | split | family | failed | why (count) |`` for one evaluation."""
    rows = []
    for family, (n, reasons) in failure_counts(trajectories).items():
        failed = sum(reasons.values())
        why = "; ".join(f"{r} ({c})" for r, c in reasons.most_common()) or "-"
        rows.append(f"| {name} | {place} | {family} | {failed}/{n} | {why} |")
    return rows
