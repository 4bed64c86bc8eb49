"""Generate trajectories at high concurrency into a resumable store.

Episodes are keyed (env, task, sample); the ones already in the store are skipped, so
re-running the same command after a crash finishes the job without losing or repeating an
episode. Each worker thread owns its environments (gymnasium envs are not thread-safe);
model clients are shared, with their own concurrency limits.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from trajgym.config import save_config
from trajgym.envs import tasks_of
from trajgym.errors import ConfigError
from trajgym.records.schema import Task, Trajectory
from trajgym.records.store import Key, TrajectoryStore, read_trajectories
from trajgym.rollouts.config import GenerateConfig
from trajgym.rollouts.progress import GenerateReport, generation_progress
from trajgym.rollouts.ray_backend import play_on_ray
from trajgym.rollouts.runner import EpisodeRunner
from trajgym.rollouts.task_check import check_expert_solves


def plan(config: GenerateConfig) -> list[Key]:
    """Every (env, task, sample) the run must produce, longest tasks first.

    Starting the longest episodes first keeps every slot busy until the end of the run
    instead of leaving a tail of long episodes running alone (longest-processing-time first).
    """
    jobs: list[tuple[int, Key]] = []
    env_ids = config.env_ids()
    if config.tasks is not None:
        check_expert_solves(env_ids[0])  # before any episode: a broken task is not a failure
    for env_id in env_ids:
        tasks = [
            t
            for t in tasks_of(env_id, config.split)
            if config.families is None or t.family in config.families
        ]
        if config.balance_families:
            tasks = _round_robin(tasks)
        tasks = tasks[config.first_task :][: config.num_tasks]
        for t in tasks:
            size = len(t.gold_actions) + 3 * len(t.goal.intents)
            jobs += [(size, (env_id, t.id, s)) for s in range(config.samples_per_task)]
    return [key for _, key in sorted(jobs, key=lambda job: -job[0])]


def _round_robin(tasks: list[Task]) -> list[Task]:
    """Tasks one family at a time in turn, so that the first N hold the families equally."""
    by_family: dict[str, list[Task]] = {}
    for t in tasks:
        by_family.setdefault(t.family, []).append(t)
    rounds = itertools.zip_longest(*(by_family[f] for f in sorted(by_family)))
    return [t for row in rounds for t in row if t is not None]


def generate(config: GenerateConfig, show_progress: bool = True) -> GenerateReport:
    """Run (or resume) a generation; returns the report, also saved beside the output."""
    started = time.perf_counter()
    keys = plan(config)
    if not keys:  # before anything is written: an empty selection is a mistake, not a run
        raise ConfigError(f"No tasks to play: {_selection(config)} selects none.")
    save_config(config, config.output.with_suffix(".config.yaml"))
    report = GenerateReport()
    with TrajectoryStore(config.output) as store:
        todo = [k for k in keys if k not in store]
        report.planned, report.skipped = len(keys), len(keys) - len(todo)

        def keep(t: Trajectory) -> None:
            if store.append(t):  # the one writer: each key lands once, whoever played it
                report.add(t)

        report.playing_since = time.perf_counter()  # a backend resets it once set up
        # Nothing to play: no model to load, no cluster to start.
        if todo and config.backend == "ray":
            play_on_ray(config, todo, keep, report, show_progress)
        elif todo:
            runner = EpisodeRunner(config, report.simulator)
            runner.expect(len(todo), config.concurrency)
            report.playing_since = time.perf_counter()
            try:
                _run_all(
                    lambda key: keep(runner.play(key)),
                    todo,
                    config,
                    report,
                    show_progress,
                )
            finally:
                runner.close()
        ended = time.perf_counter()
        report.episodes_wall_s = ended - report.playing_since
        report.drain_s = ended - report.all_started if report.all_started else 0.0
    report.wall_s = time.perf_counter() - started
    summary = config.output.with_suffix(".summary.json")
    report.stored = stored_counts(config.output, set(keys))
    summary.write_text(json.dumps(report.as_dict() | {"stored": report.stored}, indent=1))
    return report


def _selection(config: GenerateConfig) -> str:
    """The options that chose the tasks, as a user would type them."""
    parts = [f"--env {' '.join(config.env_ids())}", f"--split {config.split}"]
    if config.families:
        parts.append(f"--families {' '.join(config.families)}")
    if config.first_task:
        parts.append(f"--first-task {config.first_task}")
    return " ".join(parts)


def stored_counts(path: Path, keys: set[Key]) -> dict[str, Any]:
    """What the store holds of the planned ``keys``: this run's and every earlier run's.

    A resumed run writes only what was missing; these counts describe the whole harvest.
    """
    found = [t for t in read_trajectories(path) if t.key in keys]
    ok = sum(t.status == "ok" for t in found)
    successes = sum(t.success for t in found)
    return {
        "planned": len(keys),
        "episodes": len(found),
        "ok": ok,
        "errors": len(found) - ok,
        "successes": successes,
        "success_rate_of_ok": successes / max(1, ok),
        "per_family": dict(sorted(Counter(t.family for t in found if t.success).items())),
    }


def _run_all(
    run: Callable[[Key], None],
    todo: list[Key],
    config: GenerateConfig,
    report: GenerateReport,
    show_progress: bool,
) -> None:
    """Keep ``concurrency`` episodes in flight; stop at the first unexpected exception."""
    progress = generation_progress("generate", show_progress)
    concurrency = config.concurrency
    with progress, ThreadPoolExecutor(max_workers=concurrency) as pool:
        bar = progress.add_task("episodes", total=len(todo), stats=report.line())
        pending: set[Future[None]] = set()
        queue: Iterator[Key] = iter(todo)
        ramp = config.ramp_s / concurrency
        for n, key in enumerate(itertools.islice(queue, concurrency)):
            pending.add(pool.submit(_after, n * ramp, run, key))
        started = len(pending)
        if started == len(todo):
            report.all_started = time.perf_counter() + (started - 1) * ramp
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED, timeout=0.25)
            for future in done:
                future.result()  # a bug, not a provider fault: stop loudly
                next_key = next(queue, None)
                if next_key is not None:
                    pending.add(pool.submit(run, next_key))
                    started += 1
                    if started == len(todo):
                        report.all_started = time.perf_counter()
            progress.update(bar, completed=report.written, stats=report.line())


def _after(delay_s: float, run: Callable[[Key], None], key: Key) -> None:
    time.sleep(delay_s)
    run(key)
