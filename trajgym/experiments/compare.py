"""``trajgym compare``: how much does a student get from a teacher, by which method, at what cost?

From one base model, one student per source and budget, evaluated side by side in the same
environments (``experiments/sources.py`` says how each source trains its student):

- ``teacher``: SFT on trajectories harvested from the teacher (output imitation);
- ``logit_kd``: the same trajectories, matching a white-box teacher's next-token
  distributions too (classical distillation);
- ``self``: the student's own episodes, kept by verifier and/or judge (rejection sampling);
- ``on_policy``: the student's own episodes labelled by the teacher at every state it reached;
- ``dagger``: demonstrations aggregated with rounds of such labels (DAgger as published);
- ``opd``: the student plays, a white-box teacher scores every token it wrote (on-policy
  distillation, per-token reverse KL as the advantage);
- ``sft+rl``: the teacher student, improved by GRPO in the environment.

The student that plays for ``self`` and ``on_policy`` (the generator) is by default the
teacher student at the largest budget: a student first has to be able to act at all. Every
stage resumes. The report gives success with 95% CIs per place (test, ood, a held-out domain),
the test-minus-ood gap, each student's compute (teacher turns, teacher-scored tokens, trained
tokens), data statistics, and with several budgets a scaling plot per place.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, cast

from trajgym.config import save_config
from trajgym.experiments.cells import (
    Cell,
    CellRecord,
    ResultsFolder,
    cell_digest,
    cell_identity,
    display_name,
    free_weights,
    made_by,
    needed_weights,
    outcomes_of,
    plan_cells,
    reference_identity,
)
from trajgym.experiments.compare_config import (
    CompareConfig,
    CompareEval,
    DaggerStage,
    LogitKDStage,
    OPDStage,
    RolloutStage,
    Source,
)
from trajgym.experiments.compare_report import (
    compare_report,
    plot_budgets,
    render_compare_report,
    report_results,
)
from trajgym.experiments.compare_stats import (
    flops,
    noise_floor,
    paired_table,
    plot_compute,
)
from trajgym.experiments.flops import model_parameters
from trajgym.experiments.pools import ensure_pools
from trajgym.experiments.report import data_statistics, plot_results
from trajgym.experiments.sources import Pools, dagger_plan, make_student
from trajgym.experiments.stages import Place, evaluate, student
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec
from trajgym.train.common import TrainedModel
from trajgym.train.identity import folder_digest

__all__ = [
    "CompareConfig",
    "CompareEval",
    "DaggerStage",
    "LogitKDStage",
    "OPDStage",
    "RolloutStage",
    "Source",
    "run_compare",
]


def run_compare(config: CompareConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every cell; returns the report, also written to the results folder.

    Cells run one after another: trained, evaluated, recorded in the results folder, then
    their weights deleted unless a later cell starts from them. A recorded cell whose
    identity is unchanged is skipped; a changed one is recomputed.
    """
    out = config.output_dir
    results = ResultsFolder(config.results_root)
    results.root.mkdir(parents=True, exist_ok=True)
    save_config(config, results.root / "config.yaml")
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    pools, generator = ensure_pools(config, results, show_progress, lap)
    available: dict[str, int | None] = {s: _available(s, pools) for s in config.sources}
    trainable = [s for s in config.sources if available[s] is None or available[s]]
    bounded = [n for s in trainable if (n := available[s]) is not None]
    matched = {b: min([b, *bounded]) for b in config.budget_list}
    places = _places(config)
    records = _reference_cells(config, places, results, show_progress)
    plan = plan_cells(config, trainable)

    def write_report(pending: list[Cell]) -> dict[str, Any]:
        report = compare_report(config, records, matched, available, generator, timings)
        report["pending"] = [display_name(config, c) for c in pending]
        return _write_report(config, report, records, places, results.root)

    for i, cell in enumerate(plan):
        name = display_name(config, cell)
        records[name], made = _run_cell(config, cell, matched[cell.budget], pools, places, results)
        lap(f"cell_{cell.name}_s")
        keep = needed_weights(config, plan[i + 1 :], matched)
        for students in sorted(out.glob("students*")):
            free_weights(students, keep)
        if made and i + 1 < len(plan):  # a run stopped halfway still leaves its report so far
            write_report(plan[i + 1 :])
    return write_report([])


def _write_report(
    config: CompareConfig,
    report: dict[str, Any],
    records: dict[str, CellRecord],
    places: list[Place],
    root: Path,
) -> dict[str, Any]:
    """The report of the cells recorded so far: JSON, Markdown and plots, in the results folder."""
    labels = [p.label for p in places]
    report["paired"] = paired_table(records, labels)
    report["noise_floor"] = noise_floor(records, labels)
    base = config.sft_config("base", Path()).model
    n_student = model_parameters(_model_path(base))
    n_teacher = (
        model_parameters(_model_path(config.white_box.student)) if config.white_box else n_student
    )
    report["flops"] = {n: flops(r, n_student, n_teacher) for n, r in records.items() if r.budget}
    plot_compute(report, root / "compute.png")
    (root / "report.json").write_text(json.dumps(report, indent=1))
    metrics = report_results(records)
    (root / "report.md").write_text(render_compare_report(report, metrics))
    plot_results(metrics, root / "success.png")
    if len(config.budget_list) > 1:
        plot_budgets(report, root / "budgets.png")
    return report


def _run_cell(
    config: CompareConfig,
    cell: Cell,
    budget: int,
    pools: Pools,
    places: list[Place],
    results: ResultsFolder,
) -> tuple[CellRecord, bool]:
    """One cell: its record if made with this identity, else trained, evaluated, recorded.

    The flag says whether it was made now (a reused record changes no report).
    """
    identity = cell_identity(config, cell, budget, pools, places)
    digest = cell_digest(identity)
    recorded = results.fresh(cell.name, digest)
    if recorded is not None:
        return recorded, False
    started = time.perf_counter()
    made = make_student(config.with_seed(cell.seed), cast(Source, cell.source), budget, pools)
    trained_s = time.perf_counter() - started
    reproduced = _reproduced(config, cell, budget, results)
    name = display_name(config, cell)
    spec = student(made.model, config.eval.max_new_tokens)
    evaluated = _evaluated(config, cell, places, name, spec)
    data = None
    if made.data is not None:
        generated = _generated(config, cell.source, cell.budget, pools)
        sft = config.sft_config(cell.name, made.data)
        data = data_statistics(sft, generated, str(made.model.folder))
    sampled = {}
    largest = cell.budget == config.budget_list[-1] and cell.seed is None
    if config.noise_floor and cell.source == "teacher" and largest:
        sampled = _sampled_twice(config, cell, made.model, places[0])
    record = CellRecord(
        name=cell.name,
        source=cell.source,
        budget=cell.budget,
        seed=cell.seed,
        sampled=sampled,
        digest=digest,
        identity=identity,
        student=folder_digest(made.model.folder),
        compute=dict(made.compute),
        data=data,
        timings={
            "train_s": round(trained_s, 1),
            "total_s": round(time.perf_counter() - started, 1),
        },
        made_by=made_by(),
        reproduced=reproduced,
        **evaluated,
    )
    results.save(record)
    return record, True


def _sampled_twice(
    config: CompareConfig, cell: Cell, model: TrainedModel, place: Place
) -> dict[str, dict[str, list[bool]]]:
    """The noise floor's first half: one checkpoint evaluated with sampling at two seeds."""
    out = {}
    spec = student(model, config.eval.max_new_tokens, config.noise_floor_temperature)
    for seed in (config.seed, config.seed + 1):
        folder = _eval_dir(config, cell) / f"sampled-seed{seed}"
        evaluate({"sampled": spec}, [place], config.eval, folder, seed)
        store = next(folder.glob(f"*-{_slug(place.label)}.jsonl"))
        out[f"{place.label} seed {seed}"] = outcomes_of(store)[0]
    return out


def _model_path(model: str) -> str:
    from trajgym.agents.models import DEFAULT_STUDENT, default_student_path

    return str(default_student_path()) if model == DEFAULT_STUDENT else model


def _reproduced(
    config: CompareConfig, cell: Cell, budget: int, results: ResultsFolder
) -> dict[str, bool]:
    """For each recorded student this cell started from: were its weights made again alike?

    ``sft+rl`` continues the teacher student at its budget and DAgger's round 0 is the
    teacher student at its demonstrations; on a machine that lacks their weights they are
    retrained, and their digests are held to the recorded ones (a different CPU or precision
    may not reproduce them bit for bit: the record then says so).
    """
    starts = []
    if cell.source == "sft+rl":
        starts.append(budget)
    if cell.source == "dagger":
        d = config.dagger
        demos, _ = dagger_plan(budget, d.rounds, d.demo_share)
        starts += [demos] if demos else []
    out = {}
    seeded = config.with_seed(cell.seed)
    for b in starts:
        start = Cell(source="teacher", budget=b, seed=cell.seed)
        recorded = results.records().get(start.name)
        folder = seeded.sft_config(f"b{b}/teacher", Path()).trained().folder
        if recorded is not None and recorded.student and folder.exists():
            out[start.name] = folder_digest(folder) == recorded.student
    return out


def _reference_cells(
    config: CompareConfig, places: list[Place], results: ResultsFolder, show_progress: bool
) -> dict[str, CellRecord]:
    """The teacher and the untrained base student, evaluated where the students are."""
    e = config.eval
    agents: dict[str, AgentSpec] = {}
    if e.teacher:
        agents["teacher"] = config.teacher
    if e.base:
        base = TrainedModel(student=config.sft_config("base", Path()).model)
        agents["base student"] = student(base, e.max_new_tokens)
    records = {}
    for name, agent in agents.items():
        cell = Cell(source=name.replace(" ", "-"), budget=0)
        identity = reference_identity(config, agent, places)
        digest = cell_digest(identity)
        recorded = results.fresh(cell.name, digest)
        if recorded is None:
            started = time.perf_counter()
            evaluated = _evaluated(config, cell, places, name, agent)
            recorded = CellRecord(
                name=cell.name,
                source=cell.source,
                budget=0,
                digest=digest,
                identity=identity,
                student=None,
                compute={},
                timings={"total_s": round(time.perf_counter() - started, 1)},
                made_by=made_by(),
                **evaluated,
            )
            results.save(recorded)
        records[name] = recorded
    return records


def _eval_dir(config: CompareConfig, cell: Cell) -> Path:
    return config.output_dir / "eval" / cell.name


def _evaluated(
    config: CompareConfig, cell: Cell, places: list[Place], name: str, agent: AgentSpec
) -> dict[str, Any]:
    """`agent` evaluated on every place, as a record's fields.

    Per-task outcomes, infrastructure errors (kept apart: never counted as failures), metrics.
    """
    folder = _eval_dir(config, cell)
    metrics = evaluate({name: agent}, places, config.eval, folder, config.seed)[name]
    outcomes, errors = {}, {}
    for place in places:
        store = next(folder.glob(f"*-{_slug(place.label)}.jsonl"))
        outcomes[place.label], errors[place.label] = outcomes_of(store)
    return {
        "outcomes": outcomes,
        "infrastructure_errors": errors,
        "metrics": {p: m.as_json() for p, m in metrics.items()},
    }


def _slug(label: str) -> str:
    return label.replace(" ", "-").replace("(", "").replace(")", "")


def _places(config: CompareConfig) -> list[Place]:
    e = config.eval
    places = [Place(env=config.env, split=s, label=s, num_tasks=e.num_tasks) for s in e.splits]
    if e.heldout_env:
        label = f"{e.heldout_env.split('/')[-1]} (held-out domain)"
        places.append(
            Place(
                env=e.heldout_env,
                split="test",
                label=label,
                num_tasks=e.heldout_tasks,
                families=e.heldout_families,
            )
        )
    return places


def _available(source: Source, pools: Pools) -> int | None:
    """Usable trajectories in the pool a source draws from (None: it makes its own)."""
    if source in ("opd", "gad"):  # they play their own episodes: no pool bounds the budget
        return None
    pool = {"self": pools.self_, "on_policy": pools.labels}.get(source, pools.teacher)
    if pool is None:
        return 0
    return sum(1 for t in read_trajectories(pool) if t.status == "ok")


def _generated(config: CompareConfig, source: str, budget: int, pools: Pools) -> Path:
    """The file of every episode generated to obtain a student's data (kept or not)."""
    if source == "on_policy" and pools.labels is not None:
        return pools.labels
    if source == "self" and pools.self_ is not None:
        return pools.self_.with_name(pools.self_.stem + ".rollouts.jsonl")
    if source == "dagger":
        return config.output_dir / "data" / f"b{budget}" / "dagger" / "all.jsonl"
    return pools.teacher_rollouts
