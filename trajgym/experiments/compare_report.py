"""The report of ``trajgym compare``: results, generalisation gaps, compute, data, budgets."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from trajgym.experiments.cells import CellRecord
from trajgym.experiments.compare_config import CompareConfig
from trajgym.experiments.compare_stats import render_stats
from trajgym.experiments.report import family_table, results_rows
from trajgym.experiments.stages import Results
from trajgym.train.evaluate import EvalMetrics


def report_results(records: dict[str, CellRecord]) -> Results:
    """Every recorded agent's evaluation summaries, by its name in the report and place."""
    return {
        name: {place: EvalMetrics.from_json(m) for place, m in r.metrics.items()}
        for name, r in records.items()
    }


def compare_report(
    config: CompareConfig,
    records: dict[str, CellRecord],
    matched: dict[int, int],
    available: dict[str, int | None],
    generator: str,
    timings: dict[str, float],
) -> dict[str, Any]:
    """The run's report as JSON, built from its cells' records alone.

    ``records`` maps report names (``teacher``, ``base student``, ``teacher student @80``)
    to records; a record made on another machine reads the same as one made here.
    """
    students = {n: r for n, r in records.items() if r.budget > 0}
    return {
        "env": config.env,
        "k": config.eval.k,
        "budgets": config.budget_list,
        "matched_budget": matched,
        "available": available,
        "keep": config.keep,
        "generator": generator,
        "white_box": config.white_box.model_dump() if config.white_box else None,
        "students": {
            n: {"source": r.source, "budget": r.budget, "seed": r.seed, "cell": r.name}
            for n, r in students.items()
        },
        "compute": {n: r.compute for n, r in students.items()},
        "data": {n: r.data for n, r in students.items() if r.data is not None},
        "results": {n: r.metrics for n, r in records.items()},
        "outcomes": {n: r.outcomes for n, r in records.items()},
        "made_by": {n: r.made_by for n, r in records.items()},
        "cell_timings": {n: r.timings for n, r in records.items()},
        "timings": timings,
    }


def gap(test: EvalMetrics, ood: EvalMetrics) -> tuple[float, float, float]:
    """Test minus ood success and its 95% CI (normal approximation, independent samples)."""
    diff = test.success_rate - ood.success_rate
    var = sum(m.success_rate * (1 - m.success_rate) / max(m.episodes, 1) for m in (test, ood))
    half = 1.96 * math.sqrt(var)
    return diff, diff - half, diff + half


def render_compare_report(report: dict[str, Any], results: Results) -> str:
    """The comparison as Markdown."""
    matched = report["matched_budget"]
    lines = [
        f"# trajgym compare: {report['env']}",
        "",
        "Students trained from the same base; budgets (trajectories per source, matched "
        "across sources): "
        + ", ".join(f"{b} -> {m}" for b, m in matched.items())
        + f". Kept by: {report['keep']}. Self-generated and on-policy data were played by "
        f"`{report['generator']}`."
        + (f" White-box teacher: `{_model(report['white_box'])}`." if report["white_box"] else "")
        + " Usable trajectories per source before matching: "
        + ", ".join(
            f"{s} {'own episodes' if n is None else n}" for s, n in report["available"].items()
        )
        + "".join(
            f"; **{s} yielded none, so no {s} student was trained**"
            for s, n in report["available"].items()
            if n == 0
        )
        + ".",
        "",
        *_pending_rows(report.get("pending", [])),
        *results_rows(results, ("student", "where"), with_pass_at_k=False),
    ]
    lines += ["", *_gap_rows(results)]
    lines += ["", *render_stats(report)]
    lines += ["", *_compute_rows(report)]
    if report["data"]:
        lines += ["", *_data_rows(report["data"])]
    if len(report["budgets"]) > 1:
        lines += ["", *_budget_rows(report, results), "", "![budgets](budgets.png)"]
    lines += ["", "Success by task family:", "", *family_table(results, "student", "where")]
    lines += [
        "",
        "Seconds per stage: " + ", ".join(f"{k} {v}" for k, v in report["timings"].items()),
        "",
        "![success](success.png)",
        "",
    ]
    return "\n".join(lines)


def _pending_rows(pending: list[str]) -> list[str]:
    """A run in progress says so first: its figures are the cells recorded so far."""
    if not pending:
        return []
    return [
        f"**In progress: {len(pending)} cell{'s' * (len(pending) > 1)} still to run** "
        f"({', '.join(pending)}); "
        "everything below is the cells recorded so far.",
        "",
    ]


def _model(m: dict[str, Any]) -> str:
    return m["student"] + (f" + {m['adapter']}" if m.get("adapter") else "")


def _gap_rows(results: Results) -> list[str]:
    lines = [
        "Generalisation: test minus ood success (95% CI, normal approximation):",
        "",
        "| agent | test | ood | gap | 95% CI |",
        "|---|---|---|---|---|",
    ]
    for agent, by in results.items():
        if "test" in by and "ood" in by:
            d, low, high = gap(by["test"], by["ood"])
            lines.append(
                f"| {agent} | {by['test'].success_rate:.1%} | {by['ood'].success_rate:.1%} | "
                f"{d:+.1%} | [{low:+.1%}, {high:+.1%}] |"
            )
    return lines


def _compute_rows(report: dict[str, Any]) -> list[str]:
    lines = [
        "Compute per student: the teacher's turns generated (episodes played or states "
        "labelled), tokens a white-box teacher scored, the tokens training ran over, and "
        "episodes the student itself played while training (RL):",
        "",
        "| student | trajectories | teacher turns | teacher-scored tokens | trained tokens "
        "| own episodes |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in report["compute"].items():
        budget = report["matched_budget"][report["students"][name]["budget"]]
        lines.append(
            f"| {name} | {budget} | {c.get('teacher_turns', 0):,} | "
            f"{c.get('teacher_scored_tokens', 0):,} | {c.get('trained_tokens', 0):,} | "
            f"{c.get('episodes', 0)} |"
        )
    return lines


def _data_rows(data: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "Training data per student (turns and tool calls are those carrying loss):",
        "",
        "| student | trajectories | sequences | turns / traj. | tool calls / traj. | distinct tool "
        "sequences | tokens | trained tokens | episodes generated | their success | model tokens "
        "| cost |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, d in data.items():
        lines.append(
            f"| {name} | {d['trajectories']} | {d['sequences']} | "
            f"{d['turns_per_trajectory']} | {d['tool_calls_per_trajectory']} | "
            f"{d['distinct_tool_sequences']} | {d['tokens']:,} | {d['trained_tokens']:,} | "
            f"{d['episodes_generated']} | {d['generated_success_rate']:.1%} | "
            f"{d['llm_tokens']:,} | ${d['cost_usd']:.4f} |"
        )
    return lines


def _budget_rows(report: dict[str, Any], results: Results) -> list[str]:
    """Success against budget: one row per source and place, one column per budget."""
    budgets = report["budgets"]
    places = sorted({p for by in results.values() for p in by})
    lines = [
        "Success against budget (95% CI):",
        "",
        "| source | where | " + " | ".join(str(b) for b in budgets) + " |",
        "|---|---|" + "---|" * len(budgets),
    ]
    for source in dict.fromkeys(s["source"] for s in report["students"].values()):
        for place in places:
            cells = []
            for b in budgets:
                m = results.get(f"{source} student @{b}", {}).get(place)
                cells.append(
                    f"{m.success_rate:.0%} [{m.success_ci95[0]:.0%}, {m.success_ci95[1]:.0%}]"
                    if m
                    else "-"
                )
            lines.append(f"| {source} | {place} | " + " | ".join(cells) + " |")
    return lines


def plot_budgets(report: dict[str, Any], path: Path) -> None:
    """One panel per place: success (95% CI) against budget, one line per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    budgets = report["budgets"]
    places = sorted({p for by in results.values() for p in by})
    sources = list(dict.fromkeys(s["source"] for s in report["students"].values()))
    fig, axes = plt.subplots(1, len(places), figsize=(4.2 * len(places), 3.4), squeeze=False)
    for ax, place in zip(axes[0], places, strict=True):
        for source in sources:
            points = [
                (b, m["success_rate"], m["success_ci95"])
                for b in budgets
                if (m := results.get(f"{source} student @{b}", {}).get(place))
            ]
            if not points:
                continue
            xs, ys, cis = zip(*points, strict=True)
            errors = [
                [y - c[0] for y, c in zip(ys, cis, strict=True)],
                [c[1] - y for y, c in zip(ys, cis, strict=True)],
            ]
            ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=source)
        for reference in ("teacher", "base student"):
            if place in results.get(reference, {}):
                ax.axhline(results[reference][place]["success_rate"], ls=":", lw=1, color="gray")
        ax.set_xscale("log")
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("budget (trajectories)")
        ax.set_title(place, fontsize=10)
    axes[0][0].set_ylabel("success (95% CI)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
