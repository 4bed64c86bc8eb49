"""A comparison's cells, and the results folder that outlives the machine that ran them.

A *cell* is one student: a source at a budget (and a training seed). It is trained,
evaluated on every place, recorded, and its weights are deleted unless a later cell starts
from them. What a cell records is small (per-task outcomes per place, compute, data
statistics, timings, the machine) and lives in ``<results>/cells/<name>.json``; together with
the data pools (``<results>/data``) and the config, that folder is small enough to commit, and
a run resumes from it on another machine.

A record is reused only when its *identity* is the one this run would give the cell: the base
student's weights, the teacher (its spec, and a white-box teacher's weights), the cell's
training data, and every setting that shapes its training and evaluation. The code's commit
and the machine are recorded beside it, not in it: a run spans sessions and commits, and its
cells say which made each.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from trajgym.agents.models import resolve_dtype
from trajgym.experiments.compare_config import WHITE_BOX, CompareConfig
from trajgym.experiments.sources import Pools, dagger_plan
from trajgym.experiments.stages import Place
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec
from trajgym.train.identity import agent_identity, identity_digest, model_digest


class Cell(BaseModel):
    """One student of the comparison: ``source`` trained on ``budget`` trajectories."""

    model_config = ConfigDict(frozen=True)

    source: str
    budget: int
    seed: int | None = None  # another training seed than the run's (the noise floor)

    @property
    def name(self) -> str:
        """How the report and the results folder call it, e.g. ``teacher@80``."""
        return f"{self.source}@{self.budget}" + (f"~s{self.seed}" if self.seed is not None else "")


class CellRecord(BaseModel):
    """What a finished cell leaves: enough to report it, compare it and trust it."""

    name: str
    source: str
    budget: int
    seed: int | None = None
    digest: str  # of ``identity``: what decides whether the record can be reused
    identity: dict[str, Any]
    student: str | None  # the trained weights' digest (None for an agent that is not trained)
    outcomes: dict[str, dict[str, list[bool]]]  # place -> task id -> success per sample
    infrastructure_errors: dict[str, list[str]]  # place -> task ids (never counted as failures)
    metrics: dict[str, dict[str, Any]]  # place -> the evaluation's summary (EvalMetrics)
    compute: dict[str, float]
    data: dict[str, Any] | None = None
    timings: dict[str, float]
    made_by: dict[str, str]  # commit, CPU, precision, when
    reproduced: dict[str, bool] = {}  # recorded students it started from: retrained alike?
    sampled: dict[str, dict[str, list[bool]]] = {}  # "<place> seed <s>" -> task -> outcomes

    def success(self, place: str) -> list[bool]:
        """Each task's outcome at ``place`` (its first sample), in task order."""
        by_task = self.outcomes.get(place, {})
        return [by_task[t][0] for t in sorted(by_task)]


class ResultsFolder:
    """``<root>/cells/*.json``, ``<root>/data``, ``<root>/config.yaml``, the report: committable."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cells = root / "cells"
        self.data = root / "data"

    def fresh(self, name: str, digest: str) -> CellRecord | None:
        """The record of ``name`` if it was made with this identity (else None: recompute)."""
        path = self.cells / f"{name}.json"
        if not path.exists():
            return None
        record = CellRecord.model_validate_json(path.read_text())
        return record if record.digest == digest else None

    def save(self, record: CellRecord) -> None:
        """Write a record whole or not at all (a run killed mid-write keeps the old one)."""
        self.cells.mkdir(parents=True, exist_ok=True)
        target = self.cells / f"{record.name}.json"
        staging = target.with_suffix(".partial")
        staging.write_text(record.model_dump_json(indent=1) + "\n")
        os.replace(staging, target)

    def records(self) -> dict[str, CellRecord]:
        """Every recorded cell, by name."""
        paths = sorted(self.cells.glob("*.json")) if self.cells.exists() else []
        return {p.stem: CellRecord.model_validate_json(p.read_text()) for p in paths}


def outcomes_of(store: Path) -> tuple[dict[str, list[bool]], list[str]]:
    """An evaluation store's outcomes by task, and the tasks an infrastructure error ended.

    An episode that ended in an error (a crashed environment, a provider failure) says nothing
    about the agent: it is listed apart, never counted as a failure.
    """
    outcomes: dict[str, list[bool]] = {}
    errors: list[str] = []
    for t in read_trajectories(store):
        if t.status != "ok":
            errors.append(t.task_id)
            continue
        outcomes.setdefault(t.task_id, []).append(bool(t.success))
    return dict(sorted(outcomes.items())), sorted(errors)


def file_digest(path: Path | None) -> str | None:
    """A data file's sha256 (None for no file)."""
    if path is None:
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


def made_by() -> dict[str, str]:
    """The commit, CPU and precision that made a result, and when."""
    cpu = "unknown"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
    )
    return {
        "commit": done.stdout.strip() or "unknown",
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "precision": resolve_dtype("auto"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def cell_digest(identity: dict[str, Any]) -> str:
    """The name of a cell's identity."""
    return identity_digest(json.loads(json.dumps(identity, default=str)))


def free_weights(students: Path, keep: set[Path]) -> list[Path]:
    """Delete every trained model under ``students`` that no remaining cell needs.

    ``keep`` holds the folders of students a pending cell starts from (their checkpoints,
    with optimizer state, go: only the model is read again). Returns what was deleted.
    """
    if not students.exists():
        return []
    deleted = []
    kept = {k.resolve() for k in keep}
    for summary in sorted(students.rglob("summary.json")):
        folder = summary.parent
        if folder.resolve() in kept:
            for state in ("checkpoint", "checkpoint.previous", "checkpoint.partial"):
                shutil.rmtree(folder / state, ignore_errors=True)
            continue
        if any(k.is_relative_to(folder.resolve()) for k in kept):
            continue  # a kept student lies inside (none today; never delete it)
        shutil.rmtree(folder)
        deleted.append(folder)
    return deleted


def plan_cells(config: CompareConfig, sources: Sequence[str]) -> list[Cell]:
    """The cells to run, in an order that lets weights go early.

    Budgets smallest first; at each, the teacher student first (``sft+rl`` at that budget
    continues it, and DAgger's round 0 at twice the budget is that very training).
    """
    first = [s for s in sources if s == "teacher"] + [s for s in sources if s != "teacher"]
    cells = [Cell(source=s, budget=b) for b in config.budget_list for s in first]
    if config.noise_floor and "teacher" in sources:
        cells.append(Cell(source="teacher", budget=config.budget_list[-1], seed=config.seed + 1))
    return cells


def needed_weights(
    config: CompareConfig, pending: Sequence[Cell], matched: dict[int, int]
) -> set[Path]:
    """The student folders that ``pending`` cells start from (kept; every other one goes)."""
    keep = set()
    for cell in pending:
        if cell.source == "sft+rl":
            keep.add(_teacher_folder(config, matched[cell.budget]))
        if cell.source == "dagger":
            d = config.dagger
            demos, _ = dagger_plan(matched[cell.budget], d.rounds, d.demo_share)
            if demos:
                keep.add(_teacher_folder(config, demos))
    return keep


def _teacher_folder(config: CompareConfig, budget: int) -> Path:
    return config.sft_config(f"b{budget}/teacher", Path()).output_dir


def display_name(config: CompareConfig, cell: Cell) -> str:
    """The student's name in the report, e.g. ``teacher student @80``."""
    name = f"{cell.source} student"
    if len(config.budget_list) > 1:
        name += f" @{cell.budget}"
    return name + (f" (seed {cell.seed})" if cell.seed is not None else "")


def cell_identity(
    config: CompareConfig, cell: Cell, budget: int, pools: Pools, places: list[Place]
) -> dict[str, Any]:
    """Everything that decides what a cell's student becomes and how it is judged."""
    source = cell.source
    uses_pool = {"teacher", "logit_kd", "rationale", "dagger", "sft+rl"}
    identity: dict[str, Any] = {
        "cell": {"source": source, "budget": budget, "seed": cell.seed},
        "base": model_digest(config.sft_config("base", Path()).model),
        "teacher": agent_identity(config.teacher),
        "env": config.env,
        "seed": config.seed,
        "sft": config.sft.model_dump(mode="json"),
        "evaluation": evaluation_identity(config, places),
        "data": {
            "teacher": file_digest(pools.teacher) if source in uses_pool else None,
            "self": file_digest(pools.self_) if source == "self" else None,
            "labels": file_digest(pools.labels) if source == "on_policy" else None,
        },
    }
    if source in ("opd", "sft+rl", "gad"):
        identity["rl"] = config.rl.model_dump(mode="json")
    if source in WHITE_BOX and config.white_box is not None:
        white = AgentSpec(
            kind="student", student=config.white_box.student, adapter=config.white_box.adapter
        )
        identity["white_box"] = agent_identity(white)
        identity[source] = getattr(config, source).model_dump(mode="json")
    if source == "gad":
        identity["gad"] = config.gad.model_dump(mode="json")
    if source == "dagger":
        identity["dagger"] = config.dagger.model_dump(mode="json")
        identity["rollouts"] = config.rollouts.model_dump(mode="json")
    return identity


def reference_identity(
    config: CompareConfig, agent: AgentSpec, places: list[Place]
) -> dict[str, Any]:
    """A reference agent's (the teacher's, the base student's) evaluation identity."""
    return {"agent": agent_identity(agent), "evaluation": evaluation_identity(config, places)}


def evaluation_identity(config: CompareConfig, places: list[Place]) -> dict[str, Any]:
    """Where and how students are evaluated (the precision as configured, e.g. ``auto``)."""
    e = config.eval.model_dump(mode="json", exclude={"teacher", "base"})
    return {"eval": e, "places": [p.model_dump(mode="json") for p in places], "seed": config.seed}
