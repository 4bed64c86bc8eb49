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
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from trajgym.experiments.compare_config import (
    CompareConfig,
    CompareEval,
    DaggerStage,
    LogitKDStage,
    OPDStage,
    RolloutStage,
    Source,
)
from trajgym.experiments.compare_report import plot_budgets, render_compare_report
from trajgym.experiments.report import data_statistics, plot_results
from trajgym.experiments.sources import Pools, Student, make_student
from trajgym.experiments.stages import Place, Results, evaluate, results_json, student
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec
from trajgym.rollouts.selfgen import SelfGenConfig, self_generate
from trajgym.train.common import TrainedModel

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
    """Run (or resume) every stage; returns the report, also written to the output folder."""
    out = config.output_dir
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        timings[name] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    pools, generator = _pools(config, show_progress, lap)
    available = {s: _available(s, pools) for s in config.sources}
    trainable = [s for s in config.sources if available[s] is None or available[s]]
    bounded = [n for s in trainable if (n := available[s]) is not None]
    students: dict[str, Student] = {}
    matched: dict[int, int] = {}
    for budget in config.budget_list:
        matched[budget] = min([budget, *bounded])
        for source in trainable:
            name = _name(config, source, budget)
            if name not in students:
                students[name] = make_student(config, source, matched[budget], pools)
                lap(f"train_{name}_s")
    results = _evaluate_all(config, students, show_progress)
    lap("eval_s")
    report = {
        "env": config.env,
        "k": config.eval.k,
        "budgets": config.budget_list,
        "matched_budget": matched,
        "available": available,
        "keep": config.keep,
        "generator": generator.student + (f"+{generator.adapter}" if generator.adapter else ""),
        "white_box": config.white_box.model_dump() if config.white_box else None,
        "students": {
            n: {"source": _source_of(n), "budget": _budget_of(n, config)} for n in students
        },
        "compute": {n: s.compute for n, s in students.items()},
        "data": {
            n: data_statistics(
                config.sft_config(n, s.data), _generated(config, n, pools), str(s.model.folder)
            )
            for n, s in students.items()
            if s.data is not None
        },
        "results": results_json(results),
        "timings": timings,
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render_compare_report(report, results))
    plot_results(results, out / "success.png")
    if len(config.budget_list) > 1:
        plot_budgets(report, out / "budgets.png")
    return report


def _pools(config: CompareConfig, show_progress: bool, lap: Any) -> tuple[Pools, TrainedModel]:
    """The teacher's harvest, the generator, its episodes and their labels.

    Made for the largest budget; a smaller budget takes each pool's first trajectories.
    """
    data = config.output_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    largest = config.budget_list[-1]
    teacher = data / "teacher.jsonl"
    self_generate(_sampling(config, config.teacher, teacher, None, 0, 1, largest), show_progress)
    rollouts = data / "teacher.rollouts.jsonl"
    pools = Pools(teacher=teacher, teacher_rollouts=rollouts)
    lap("harvest_s")
    generator = _generator(config, pools)
    lap("generator_s")
    # The generator plays train tasks the teacher's harvest did not use.
    harvested = len({t.task_id for t in read_trajectories(rollouts)})
    spec = student(generator, config.rollouts.max_new_tokens, config.rollouts.temperature)
    play = _sampling(config, spec, data / "self.jsonl", "self", harvested, None, largest)
    pools = replace(pools, first_free_task=harvested + config.rollouts.max_tasks)
    if {"self", "on_policy"} & set(config.sources):
        self_generate(play, show_progress)
        pools = replace(pools, self_=play.output)
    lap("rollouts_s")
    if "on_policy" in config.sources:
        from trajgym.rollouts.onpolicy import label_file

        labels = data / "on_policy.jsonl"
        label_file(play.rollouts_path, labels, config.teacher, largest, show_progress=show_progress)
        pools = replace(pools, labels=labels)
    lap("labels_s")
    return pools, generator


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


def _available(source: Source, pools: Pools) -> int | None:
    """Usable trajectories in the pool a source draws from (None: it makes its own)."""
    if source == "opd":  # it plays its own episodes: no pool bounds its budget
        return None
    pool = {"self": pools.self_, "on_policy": pools.labels}.get(source, pools.teacher)
    if pool is None:
        return 0
    return sum(1 for t in read_trajectories(pool) if t.status == "ok")


def _name(config: CompareConfig, source: Source, budget: int) -> str:
    """A student's name in the report: the source, and the budget when there are several."""
    return f"{source} student" + (f" @{budget}" if len(config.budget_list) > 1 else "")


def _source_of(name: str) -> str:
    return name.split(" student")[0]


def _budget_of(name: str, config: CompareConfig) -> int:
    return int(name.split("@")[1]) if "@" in name else config.budget_list[0]


def _evaluate_all(
    config: CompareConfig, students: dict[str, Student], show_progress: bool
) -> Results:
    e = config.eval
    base = TrainedModel(student=config.sft_config("base", Path()).model)
    agents: dict[str, AgentSpec] = {}
    if e.teacher:
        agents["teacher"] = config.teacher
    if e.base:
        agents["base student"] = student(base, e.max_new_tokens)
    for name, trained in students.items():
        agents[name] = student(trained.model, e.max_new_tokens)
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
    return evaluate(agents, places, e, config.output_dir / "eval", config.seed, show_progress)


def _generated(config: CompareConfig, name: str, pools: Pools) -> Path:
    """The file of every episode generated to obtain a student's data (kept or not)."""
    source = _source_of(name)
    if source == "on_policy" and pools.labels is not None:
        return pools.labels
    if source == "self" and pools.self_ is not None:
        return pools.self_.with_name(pools.self_.stem + ".rollouts.jsonl")
    if source == "dagger":
        budget = _budget_of(name, config)
        return config.output_dir / "data" / f"b{budget}" / "dagger" / "all.jsonl"
    return pools.teacher_rollouts
