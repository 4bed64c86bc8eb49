"""Generation on a Ray cluster: worker actors play the episodes, the driver alone writes.

Each worker is a Ray actor, a process that builds its own environments, sandboxes and model
clients from the run's config once, then plays episodes on its threads. The driver keeps
``concurrency`` episodes in flight, one Ray call per episode, sent to the least busy worker,
so a slot is refilled the moment its episode ends (no chunk waiting for its slowest
episode), and appends each trajectory to the keyed store as it arrives.

A worker lost mid-run is restarted by Ray and its unfinished episodes are played again
(``max_restarts`` / ``max_task_retries``): they replay identically, since their seeds derive
from their keys, and the store keeps each key once, so nothing is lost and nothing is written
twice. Resuming works as on one machine: keys already in the store are never sent out.

On a real cluster, trajgym must be importable on every node (install it there, or pass a
``runtime_env`` when connecting), and provider keys must be in the workers' environment.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trajgym.envs.users.llm import SimulatorStats
from trajgym.errors import ConfigError
from trajgym.records.schema import Trajectory
from trajgym.records.store import Key

if TYPE_CHECKING:
    from trajgym.rollouts.config import GenerateConfig
    from trajgym.rollouts.progress import GenerateReport

# A worker that dies is restarted, and its episodes retried, this many times.
MAX_RETRIES = 5


class EpisodeWorker:
    """A Ray actor: one process's environments and clients, playing episodes on threads."""

    def __init__(self, payload: str) -> None:
        from trajgym.rollouts.config import GenerateConfig
        from trajgym.rollouts.runner import EpisodeRunner

        self.runner = EpisodeRunner(GenerateConfig.model_validate_json(payload), SimulatorStats())

    def ready(self) -> bool:
        """Answers once the worker is built (the driver waits for every one)."""
        return True

    def play(self, key: Key) -> tuple[str, dict[str, Any]]:
        """One episode as JSON, and its simulated user's turns and faults."""
        trajectory, simulator = self.runner.play_counted(tuple(key))  # type: ignore[arg-type]
        return trajectory.model_dump_json(), simulator.counts()


def play_on_ray(
    config: GenerateConfig,
    todo: list[Key],
    keep: Callable[[Trajectory], None],
    report: GenerateReport,
    show_progress: bool,
) -> None:
    """Play ``todo`` on Ray, handing each trajectory to ``keep`` on the driver."""
    import ray

    from trajgym.rollouts.progress import generation_progress

    if config.agent.kind == "student":
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
    try:
        workers = _start_workers(ray, config, len(todo))
        report.playing_since = time.perf_counter()
        load = dict.fromkeys(range(len(workers)), 0)  # episodes in flight per worker
        pending: dict[Any, int] = {}  # episode's ref -> its worker
        queue = iter(todo)
        sent = 0

        def send(key: Key) -> None:
            nonlocal sent
            worker = min(load, key=load.__getitem__)
            load[worker] += 1
            pending[workers[worker].play.remote(key)] = worker
            sent += 1
            if sent == len(todo):
                report.all_started = time.perf_counter()

        with generation_progress("generate (ray)", show_progress) as progress:
            bar = progress.add_task("episodes", total=len(todo), stats=report.line())
            for key in itertools.islice(queue, config.concurrency):
                send(key)
                time.sleep(config.ramp_s / config.concurrency)
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.25)
                if ready:  # take every finished one, not just the first
                    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
                for ref in ready:
                    load[pending.pop(ref)] -= 1
                    line, simulator = ray.get(ref)  # a worker out of restarts raises here
                    keep(Trajectory.model_validate_json(line))
                    report.simulator.add(SimulatorStats.from_counts(simulator))
                    following = next(queue, None)
                    if following is not None:
                        send(following)
                progress.update(bar, completed=report.written, stats=report.line())
    finally:
        if started_here:
            ray.shutdown()


def _start_workers(ray: Any, config: GenerateConfig, episodes: int) -> list[Any]:
    """The run's worker actors, each allowed its share of the concurrency on its threads."""
    cpus = ray.cluster_resources().get("CPU", 0.0)
    count = config.ray_workers or max(1, int(cpus))
    count = max(1, min(count, episodes, config.concurrency))
    if count * config.ray_worker_cpus > cpus:  # Ray would wait for them forever
        raise ConfigError(
            f"{count} Ray workers x {config.ray_worker_cpus} CPUs each (ray_worker_cpus) need "
            f"{count * config.ray_worker_cpus:g} CPUs; the cluster has {cpus:g}. Lower "
            "ray_workers, or ray_worker_cpus (workers mostly wait on the network)."
        )
    actor = ray.remote(
        num_cpus=config.ray_worker_cpus,
        max_concurrency=math.ceil(config.concurrency / count),
        max_restarts=MAX_RETRIES,
        max_task_retries=MAX_RETRIES,
    )(EpisodeWorker)
    payload = config.model_dump_json()
    workers = [actor.remote(payload) for _ in range(count)]
    ray.get([worker.ready.remote() for worker in workers])
    return workers
