"""The comparison's report: generalisation gaps, compute per student, the budget sweep."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trajgym.experiments.cells import CellRecord
from trajgym.experiments.compare_report import gap, plot_budgets, render_compare_report
from trajgym.experiments.compare_stats import paired_table
from trajgym.experiments.paired import minimum_detectable_difference
from trajgym.experiments.stages import results_json
from trajgym.train.evaluate import EvalMetrics


def metrics(rate: float, n: int = 40) -> EvalMetrics:
    return EvalMetrics(
        k=1,
        episodes=n,
        errors=0,
        tasks=n,
        success_rate=rate,
        success_ci95=(max(0.0, rate - 0.15), min(1.0, rate + 0.15)),
        pass_at_k=rate,
        pass_hat_k=rate,
        by_family={},
        by_persona={},
        avg_turns=5.0,
        avg_tool_calls=2.0,
        avg_invalid_tool_calls=0.0,
        avg_tool_errors=0.0,
    )


def test_the_gap_is_test_minus_ood_with_a_normal_interval() -> None:
    d, low, high = gap(metrics(0.75), metrics(0.5))
    half = 1.96 * ((0.75 * 0.25 + 0.5 * 0.5) / 40) ** 0.5
    assert d == pytest.approx(0.25) and (low, high) == pytest.approx((0.25 - half, 0.25 + half))


def test_the_sweep_report_tabulates_every_source_and_budget(tmp_path: Path) -> None:
    results = {
        "teacher": {"test": metrics(1.0), "ood": metrics(1.0)},
        "teacher student @20": {"test": metrics(0.25), "ood": metrics(0.125)},
        "teacher student @40": {"test": metrics(0.5), "ood": metrics(0.25)},
        "opd student @20": {"test": metrics(0.375), "ood": metrics(0.3)},
    }
    students = {
        "teacher student @20": {"source": "teacher", "budget": 20},
        "teacher student @40": {"source": "teacher", "budget": 40},
        "opd student @20": {"source": "opd", "budget": 20},
    }
    report = {
        "env": "trajgym/RetailLite-v0",
        "budgets": [20, 40],
        "matched_budget": {20: 20, 40: 40},
        "available": {"teacher": 40, "opd": None},
        "keep": "both",
        "generator": "g",
        "white_box": {"student": "runs/wb", "adapter": None},
        "students": students,
        "compute": {
            "teacher student @20": {"teacher_turns": 120, "trained_tokens": 9000},
            "teacher student @40": {"teacher_turns": 240, "trained_tokens": 18000},
            "opd student @20": {
                "teacher_scored_tokens": 3000,
                "trained_tokens": 7000,
                "episodes": 20,
            },
        },
        "data": {},
        "results": results_json(results),
        "timings": {"eval_s": 1.0},
    }
    text = render_compare_report(report, results)
    assert "| teacher | test | 25% [10%, 40%] | 50% [35%, 65%] |" in text
    assert "| opd | test | 38% [22%, 52%] | - |" in text  # no opd student at 40
    assert "| teacher student @40 | 50.0% | 25.0% | +25.0% |" in text
    assert "| opd student @20 | 20 | 0 | 3,000 | 7,000 | 20 |" in text
    assert "White-box teacher: `runs/wb`" in text and "opd own episodes" in text
    plot_budgets(json.loads(json.dumps(report)) | {"budgets": [20, 40]}, tmp_path / "b.png")
    assert (tmp_path / "b.png").stat().st_size > 0


def _cell(source: str, outcomes: list[bool]) -> CellRecord:
    return CellRecord(
        name=f"{source}@40",
        source=source,
        budget=40,
        digest="d",
        identity={},
        student="s",
        outcomes={"test": {f"t{i:03d}": [o] for i, o in enumerate(outcomes)}},
        infrastructure_errors={"test": []},
        metrics={},
        compute={},
        timings={},
        made_by={},
    )


def test_a_detectable_difference_is_reported_only_where_mcnemar_could_reject() -> None:
    control = [True] * 10 + [False] * 190
    records = {
        "teacher": _cell("teacher", control),
        "same": _cell("same", control),  # no task disagrees: nothing is detectable
        "five": _cell("five", [True] * 15 + [False] * 185),  # 5 discordant: p >= 0.0625
        "six": _cell("six", [True] * 16 + [False] * 184),
    }
    mdd = {r["source"]: r["mdd"] for r in paired_table(records, ["test"])}
    assert mdd["same"] is None and mdd["five"] is None
    assert mdd["six"] == pytest.approx(minimum_detectable_difference(200, 6 / 200))
