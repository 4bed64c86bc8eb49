"""The comparison's statistics: paired differences, the noise floor, and compute in FLOPs.

Every source is evaluated on the same tasks, so each source is compared with output
imitation (the ``teacher`` source) at the same budget task by task: a paired bootstrap
interval and McNemar's exact p on the tasks both finished without an infrastructure error.
The noise floor says how much outcomes move by chance: the same checkpoint sampled at two
seeds, and the same cell trained at two seeds. Compute follows the field's convention
(``experiments/flops.py``): 6·N per trained token, 2·N per token a teacher scored or a student
generated in its own episodes; a scripted teacher's tokens are costed nominally at the
white-box teacher's size (the student's: it is a checkpoint of it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trajgym.experiments.cells import CellRecord
from trajgym.experiments.flops import cell_compute
from trajgym.experiments.paired import (
    flip_rate,
    minimum_detectable_difference,
    paired_difference,
)

CONTROL = "teacher"  # output imitation: what every other source is held against


def aligned(a: CellRecord, b: CellRecord, place: str) -> tuple[list[bool], list[bool]]:
    """Two cells' outcomes on the tasks both have at ``place`` (first sample), task order."""
    ta, tb = a.outcomes.get(place, {}), b.outcomes.get(place, {})
    shared = sorted(set(ta) & set(tb))
    return [ta[t][0] for t in shared], [tb[t][0] for t in shared]


def paired_table(records: dict[str, CellRecord], places: list[str]) -> list[dict[str, Any]]:
    """Each source minus output imitation, per budget and place, with its paired interval."""
    by_cell = {r.name: r for r in records.values() if r.seed is None and r.budget > 0}
    rows = []
    for r in by_cell.values():
        control = by_cell.get(f"{CONTROL}@{r.budget}")
        if r.source == CONTROL or control is None:
            continue
        for place in places:
            a, b = aligned(control, r, place)
            if not a:
                continue
            d = paired_difference(a, b)
            rows.append(
                {"source": r.source, "budget": r.budget, "place": place, **d.as_json()}
                | {"mdd": _mdd(d.n, d.a_wins + d.b_wins)}
            )
    return rows


# McNemar's exact test on k discordant tasks has 2 * 0.5**k as its smallest p-value: under
# 0.05 only from k = 6. With fewer, no difference is detectable, however small the formula says.
MIN_DISCORDANT = 6


def _mdd(n: int, discordant: int) -> float | None:
    """The minimum detectable difference at the observed discordance (None: none is)."""
    if discordant < MIN_DISCORDANT:
        return None
    try:
        return minimum_detectable_difference(n, discordant / n)
    except ValueError:  # too few tasks for the formula
        return None


def noise_floor(records: dict[str, CellRecord], places: list[str]) -> list[dict[str, Any]]:
    """Flip rates: one checkpoint sampled at two seeds; one cell trained at two seeds."""
    rows = []
    for r in records.values():
        seeds = sorted(r.sampled)
        for place in places:
            pair = [k for k in seeds if k.startswith(f"{place} ")]
            if len(pair) == 2:
                one, two = (r.sampled[k] for k in pair)
                shared = sorted(set(one) & set(two))
                f = flip_rate([one[t][0] for t in shared], [two[t][0] for t in shared])
                rows.append(
                    {"what": f"{r.name} sampled at two seeds", "place": place, **f.as_json()}
                )
        if r.seed is not None:
            first = next((x for x in records.values() if x.name == f"{r.source}@{r.budget}"), None)
            for place in places if first else []:
                assert first is not None
                a, b = aligned(first, r, place)
                if a:
                    f = flip_rate(a, b)
                    what = f"{r.source}@{r.budget} trained at two seeds"
                    rows.append({"what": what, "place": place, **f.as_json()})
    return rows


def flops(record: CellRecord, student_params: int, teacher_params: int) -> dict[str, Any]:
    """A cell's compute in FLOPs from its recorded token counts."""
    c = record.compute
    data = record.data or {}
    scripted = int(c.get("teacher_turns", 0)) > 0 and "teacher_scored_tokens" not in c
    teacher_tokens = int(c.get("teacher_scored_tokens", 0))
    if scripted:  # the teacher wrote the trajectories' assistant tokens: costed nominally
        teacher_tokens += int(data.get("trained_tokens", 0))
    compute = cell_compute(
        student_params=student_params,
        teacher_params=teacher_params,
        trajectories=int(data.get("trajectories", c.get("episodes", 0))),
        trained_tokens=int(c.get("trained_tokens", 0)),
        teacher_tokens=teacher_tokens,
        rollout_tokens=int(c.get("rollout_tokens", 0)),
        scripted_teacher=scripted,
    )
    return compute.as_json()


def plot_compute(report: dict[str, Any], path: Path) -> None:
    """Success against FLOPs and against trajectories, a line per source, 95% bands, per place."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = report["students"]
    places = sorted({p for n in students for p in report["results"].get(n, {})})
    if not places:
        return
    fig, axes = plt.subplots(2, len(places), figsize=(5 * len(places), 8), squeeze=False)
    sources = list(dict.fromkeys(s["source"] for s in students.values()))
    for col, place in enumerate(places):
        for row, axis in enumerate(("total_flops", "trajectories")):
            ax = axes[row][col]
            for source in sources:
                names = sorted(
                    (n for n, s in students.items() if s["source"] == source and not s["seed"]),
                    key=lambda n: students[n]["budget"],
                )
                points = [
                    (report["flops"][n][axis], report["results"][n][place])
                    for n in names
                    if place in report["results"].get(n, {}) and n in report["flops"]
                ]
                if not points:
                    continue
                x = [p[0] for p in points]
                y = [p[1]["success_rate"] for p in points]
                low = [p[1]["success_ci95"][0] for p in points]
                high = [p[1]["success_ci95"][1] for p in points]
                ax.plot(x, y, marker="o", label=source)
                ax.fill_between(x, low, high, alpha=0.15)
            ax.set_xscale("log")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{place}")
            ax.set_xlabel("training + teacher + rollout FLOPs" if row == 0 else "trajectories")
            ax.set_ylabel("success")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_stats(report: dict[str, Any]) -> list[str]:
    """The paired differences, the noise floor and the compute, as Markdown."""
    lines = [
        "Each source minus output imitation (`teacher`) at the same budget, on the same tasks "
        "(paired bootstrap 95% interval; McNemar's exact p; MDD: the smallest difference these "
        "n tasks detect at 80% power given the observed discordance; -: fewer than "
        f"{MIN_DISCORDANT} tasks disagree, so McNemar's test could never reject):",
        "",
        "| source | budget | where | n | difference | 95% CI | wins / losses | p | MDD |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report.get("paired", []):
        lines.append(
            f"| {r['source']} | {r['budget']} | {r['place']} | {r['n']} | "
            f"{r['difference']:+.1%} | [{r['ci95'][0]:+.1%}, {r['ci95'][1]:+.1%}] | "
            f"{r['b_wins']} / {r['a_wins']} | {r['p_value']:.3f} | "
            + (f"{r['mdd']:.1%} |" if r["mdd"] is not None else "- |")
        )
    floor = report.get("noise_floor", [])
    if floor:
        lines += [
            "",
            "Noise floor (the share of tasks whose outcome flips by chance alone):",
            "",
            "| what | where | n | flips | rate | 95% CI |",
            "|---|---|---|---|---|---|",
        ]
        for r in floor:
            lines.append(
                f"| {r['what']} | {r['place']} | {r['n']} | {r['flips']} | {r['rate']:.1%} | "
                f"[{r['ci95'][0]:.1%}, {r['ci95'][1]:.1%}] |"
            )
    if report.get("flops"):
        lines += [
            "",
            "Compute per student (FLOPs: 6N per trained token, 2N per teacher-scored or "
            "rollout token; `*` a scripted teacher's tokens costed at the student's size):",
            "",
            "| student | trajectories | training | teacher | rollouts | total |",
            "|---|---|---|---|---|---|",
        ]
        for name, c in report["flops"].items():
            star = "*" if c["teacher_flops_nominal"] else ""
            lines.append(
                f"| {name} | {c['trajectories']} | {c['student_training_flops']:.2e} | "
                f"{c['teacher_inference_flops']:.2e}{star} | {c['rollout_flops']:.2e} | "
                f"{c['total_flops']:.2e} |"
            )
        lines += ["", "![compute](compute.png)"]
    return lines
