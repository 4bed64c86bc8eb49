"""Generation on a Ray cluster: workers play the episodes, the driver alone writes the store.

Each Ray task plays a chunk of episode keys concurrently on its worker, a process that
builds its own environments, sandboxes and model clients from the run's config, and
returns the trajectories; the driver appends them to the keyed store as they arrive. A
worker lost mid-chunk makes Ray run the chunk again elsewhere (``max_retries``): its
episodes replay identically, since their seeds derive from their keys, and the store keeps
each key once, so nothing is lost and nothing is written twice. Resuming works as on one
machine: keys already in the store are never sent out.

On a real cluster, trajgym must be importable on every node (install it there, or pass a
``runtime_env`` when connecting), and provider keys must be in the workers' environment.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from trajgym.envs.users.llm import SimulatorStats
from trajgym.errors import ConfigError
from trajgym.trajectories.schema import Trajectory
from trajgym.trajectories.store import Key

if TYPE_CHECKING:
    from trajgym.trajectories.generate import EpisodeRunner, GenerateConfig, GenerateReport

# A chunk whose worker dies is run again this many times before the run stops.
MAX_RETRIES = 5


def play_on_ray(
    config: GenerateConfig,
    todo: list[Key],
    keep: Callable[[Trajectory], None],
    report: GenerateReport,
    show_progress: bool,
) -> None:
    """Play ``todo`` on Ray, handing each trajectory to ``keep`` on the driver."""
    import ray

    if config.teacher.kind == "student":
        raise ConfigError(
            "Ray generation plays with the scripted expert, an LLM (litellm) or a baseline; a "
            "local student generates with `backend: local` (it batches on one model)."
        )
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=config.ray_address,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
    play = ray.remote(max_retries=MAX_RETRIES, num_cpus=config.ray_task_cpus)(play_chunk)
    payload = config.model_dump_json()
    chunks = iter([todo[i : i + config.ray_chunk] for i in range(0, len(todo), config.ray_chunk)])
    in_flight = max(1, math.ceil(config.concurrency / config.ray_chunk))
    progress = Progress(
        TextColumn("[bold]generate (ray)"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        disable=not show_progress,
    )
    try:
        with progress:
            bar = progress.add_task("episodes", total=len(todo), stats=report.line())
            pending = {play.remote(payload, c): c for c in itertools.islice(chunks, in_flight)}
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
                for ref in ready:
                    del pending[ref]
                    lines, simulator = ray.get(ref)  # a chunk out of retries raises here
                    for line in lines:
                        keep(Trajectory.model_validate_json(line))
                    _add(report.simulator, simulator)
                    following = next(chunks, None)
                    if following is not None:
                        pending[play.remote(payload, following)] = following
                progress.update(bar, completed=report.written, stats=report.line())
    finally:
        if started_here:
            ray.shutdown()


_RUNNERS: dict[str, tuple[EpisodeRunner, SimulatorStats]] = {}


def play_chunk(payload: str, keys: list[Key]) -> tuple[list[str], dict[str, Any]]:
    """On a worker: play ``keys`` concurrently; their trajectories as JSON, and user faults.

    The runner (environments, clients) is built once per worker process and config.
    """
    from trajgym.trajectories.generate import EpisodeRunner, GenerateConfig

    digest = hashlib.sha256(payload.encode()).hexdigest()
    if digest not in _RUNNERS:
        stats = SimulatorStats()
        _RUNNERS[digest] = (
            EpisodeRunner(GenerateConfig.model_validate_json(payload), stats),
            stats,
        )
    runner, stats = _RUNNERS[digest]
    before = _counts(stats)
    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        trajectories = list(pool.map(runner.play, [tuple(k) for k in keys]))
    after = _counts(stats)
    delta = {
        "turns": after["turns"] - before["turns"],
        "failed_users": after["failed_users"] - before["failed_users"],
        "faults": {k: n - before["faults"].get(k, 0) for k, n in after["faults"].items()},
    }
    return [t.model_dump_json() for t in trajectories], delta


def _counts(stats: SimulatorStats) -> dict[str, Any]:
    with stats._lock:
        return {
            "turns": stats.turns,
            "failed_users": stats.failed_users,
            "faults": dict(stats.faults),
        }


def _add(stats: SimulatorStats, delta: dict[str, Any]) -> None:
    with stats._lock:
        stats.turns += delta["turns"]
        stats.failed_users += delta["failed_users"]
        for kind, n in delta["faults"].items():
            stats.faults[kind] = stats.faults.get(kind, 0) + n
