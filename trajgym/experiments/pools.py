"""The data a comparison draws from, made once and kept with its results.

The teacher's harvest, the generator's own episodes and the teacher's labels of them are made
for the largest budget; a smaller budget takes each pool's first trajectories. Once made they
are copied (gzipped) into the results folder with the identity that made them, so a run
resumed on another machine reads the same data, byte for byte, and never retrains the
generator to replay it.
"""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from trajgym.experiments.cells import ResultsFolder, cell_digest
from trajgym.experiments.compare_config import CompareConfig
from trajgym.experiments.sources import Pools, make_student
from trajgym.experiments.stages import student
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec
from trajgym.rollouts.selfgen import SelfGenConfig, self_generate
from trajgym.train.common import TrainedModel
from trajgym.train.identity import agent_identity, model_digest


def harvest_identity(config: CompareConfig) -> dict[str, Any]:
    """What the teacher's harvest depends on (not which sources play after it)."""
    return {
        "env": config.env,
        "seed": config.seed,
        "largest": config.budget_list[-1],
        "teacher": agent_identity(config.teacher),
        "keep": config.keep,
        "judge": config.judge.model_dump(mode="json"),
    }


def pools_identity(config: CompareConfig) -> dict[str, Any]:
    """What the pools depend on: teacher, generator, how episodes are played and kept."""
    played = {"self", "on_policy"} & set(config.sources)
    return {
        **harvest_identity(config),
        "played": sorted(played),
        "rollouts": config.rollouts.model_dump(mode="json") if played else None,
        "generator": _generator_identity(config) if played else None,
    }


def ensure_pools(
    config: CompareConfig, results: ResultsFolder, show_progress: bool, lap: Callable[[str], None]
) -> tuple[Pools, str]:
    """The pools (restored from ``results`` when made with this identity), and who played."""
    data = config.output_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    digest = cell_digest(pools_identity(config))
    manifest = results.data / "pools.json"
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved["digest"] == digest:
            for name in saved["files"]:
                _gunzip(results.data / f"{name}.gz", data / name)
            pools = _pools_from(data, saved)
            return pools, saved["generator"]
        if saved.get("harvest_digest") == cell_digest(harvest_identity(config)):
            # Only what plays after the harvest changed (e.g. a source added): the harvest
            # resumes from its saved files, unchanged, so the cells trained on it stay fresh.
            for name in saved["files"]:
                if name.startswith("teacher."):  # its episodes, kept ones and verdicts
                    _gunzip(results.data / f"{name}.gz", data / name)
    pools, generator = _make_pools(config, show_progress, lap)
    files = sorted(p.name for p in data.glob("*.jsonl"))
    results.data.mkdir(parents=True, exist_ok=True)
    for name in files:
        _gzip(data / name, results.data / f"{name}.gz")
    saved = {
        "digest": digest,
        "harvest_digest": cell_digest(harvest_identity(config)),
        "identity": pools_identity(config),
        "files": files,
        "first_free_task": pools.first_free_task,
        "self": pools.self_.name if pools.self_ else None,
        "labels": pools.labels.name if pools.labels else None,
        "generator": generator,
    }
    manifest.write_text(json.dumps(saved, indent=1, default=str) + "\n")
    return pools, generator


def _pools_from(data: Path, saved: dict[str, Any]) -> Pools:
    return Pools(
        teacher=data / "teacher.jsonl",
        teacher_rollouts=data / "teacher.rollouts.jsonl",
        self_=data / saved["self"] if saved["self"] else None,
        labels=data / saved["labels"] if saved["labels"] else None,
        first_free_task=saved["first_free_task"],
    )


def _gzip(source: Path, target: Path) -> None:
    staging = target.with_suffix(".partial")
    with source.open("rb") as f, gzip.GzipFile(staging, "wb", mtime=0) as g:
        shutil.copyfileobj(f, g)  # mtime 0: the same data gives the same bytes to commit
    staging.replace(target)


def _gunzip(source: Path, target: Path) -> None:
    if target.exists():
        return
    staging = target.with_suffix(".partial")
    with gzip.open(source, "rb") as f, staging.open("wb") as g:
        shutil.copyfileobj(f, g)
    staging.replace(target)


def _make_pools(
    config: CompareConfig, show_progress: bool, lap: Callable[[str], None]
) -> tuple[Pools, str]:
    """The teacher's harvest, the generator's episodes and their labels, played now."""
    data = config.output_dir / "data"
    largest = config.budget_list[-1]
    teacher = data / "teacher.jsonl"
    self_generate(_sampling(config, config.teacher, teacher, None, 0, 1, largest), show_progress)
    pools = Pools(teacher=teacher, teacher_rollouts=data / "teacher.rollouts.jsonl")
    lap("harvest_s")
    if not {"self", "on_policy"} & set(config.sources):
        return pools, "nobody (no source plays)"
    generator = _generator(config, pools)
    lap("generator_s")
    # The generator plays train tasks the teacher's harvest did not use.
    harvested = len({t.task_id for t in read_trajectories(pools.teacher_rollouts)})
    spec = student(generator, config.rollouts.max_new_tokens, config.rollouts.temperature)
    play = _sampling(config, spec, data / "self.jsonl", "self", harvested, None, largest)
    pools = replace(pools, first_free_task=harvested + config.rollouts.max_tasks)
    self_generate(play, show_progress)
    pools = replace(pools, self_=play.output)
    lap("rollouts_s")
    if "on_policy" in config.sources:
        from trajgym.rollouts.onpolicy import label_file

        labels = data / "on_policy.jsonl"
        label_file(play.rollouts_path, labels, config.teacher, largest, show_progress=show_progress)
        pools = replace(pools, labels=labels)
    lap("labels_s")
    return pools, generator.student + (f"+{generator.adapter}" if generator.adapter else "")


def _sampling(
    config: CompareConfig,
    agent: AgentSpec,
    output: Path,
    provenance: Literal["self"] | None,
    first_task: int,
    samples: int | None,
    target: int,
) -> SelfGenConfig:
    """Episodes by ``agent`` on train tasks until ``target`` are kept."""
    r = config.rollouts
    return SelfGenConfig(
        env=config.env,
        agent=agent,
        samples_per_task=samples or r.samples_per_task,
        first_task=first_task,
        max_tasks=target * 4 if samples == 1 else r.max_tasks,
        tasks_per_round=target if samples == 1 else r.tasks_per_round,
        target=target,
        keep=config.keep,
        judge=config.judge,
        provenance=provenance,
        seed=config.seed,
        output=output,
        concurrency=64 if agent.kind == "expert" else r.concurrency,
        max_turns=r.max_turns,
    )


def _generator_identity(config: CompareConfig) -> dict[str, Any]:
    if config.generator:
        spec = AgentSpec(kind="student", student=config.generator, adapter=config.generator_adapter)
        return agent_identity(spec)
    base = config.sft_config("base", Path()).model
    return {  # the teacher student at the largest budget: its base, data source and training
        "trained_from": model_digest(base),
        "sft": config.sft.model_dump(mode="json"),
        "budget": config.budget_list[-1],
    }


def _generator(config: CompareConfig, pools: Pools) -> TrainedModel:
    """The student that plays for self / on-policy data.

    Given, or the teacher student at the largest budget the harvest allows (the same
    training as that source's student, so it is done once).
    """
    if config.generator:
        return TrainedModel(student=config.generator, adapter=config.generator_adapter)
    harvested = sum(1 for t in read_trajectories(pools.teacher) if t.status == "ok")
    size = min(config.budget_list[-1], harvested)
    return make_student(config, "teacher", size, pools).model
