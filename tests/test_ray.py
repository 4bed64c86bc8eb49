"""Generation on Ray (a local cluster): same episodes as one machine, exactly once, and a
worker killed mid-run loses and duplicates nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from trajgym.errors import ConfigError
from trajgym.llm.client import LLMConfig
from trajgym.records.store import TrajectoryStore, read_trajectories
from trajgym.rollouts.config import AgentSpec, GenerateConfig
from trajgym.rollouts.generate import generate, plan
from trajgym.testing.fake_openai import FakeOpenAIServer, scripted_agent_responder

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.timeout(600)


def test_ray_plays_the_same_episodes_and_resumes(tmp_path: Path) -> None:
    local = GenerateConfig(
        envs=["trajgym/RetailLite-v0", "trajgym/Airline-v0"],
        num_tasks=12,
        samples_per_task=2,
        output=tmp_path / "local.jsonl",
    )
    generate(local, show_progress=False)
    on_ray = local.model_copy(
        update={"output": tmp_path / "ray.jsonl", "backend": "ray", "ray_workers": 2}
    )
    # A run that crashed after a few episodes: those are not played again.
    done = list(read_trajectories(local.output))[:7]
    with TrajectoryStore(on_ray.output) as store:
        for t in done:
            store.append(t)
    report = generate(on_ray, show_progress=False)
    assert report.skipped == 7 and report.written == 48 - 7
    want = {t.key: t for t in read_trajectories(local.output)}
    got = list(read_trajectories(on_ray.output))
    assert len(got) == len({t.key for t in got}) == 48
    assert all(t.messages == want[t.key].messages and t.reward == want[t.key].reward for t in got)


def _workers() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ray::EpisodeWorker"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    with FakeOpenAIServer(scripted_agent_responder, latency_s=0.05) as server:
        llm = LLMConfig(model="openai/fake", api_base=server.base_url, timeout_s=5)
        cfg = GenerateConfig(
            envs=["trajgym/RetailLite-v0"],
            num_tasks=40,
            agent=AgentSpec(kind="litellm", llm=llm),
            output=tmp_path / "t.jsonl",
            backend="ray",
            ray_workers=2,
            concurrency=8,
        )
        result: dict[str, object] = {}
        run = threading.Thread(target=lambda: result.update(r=generate(cfg, show_progress=False)))
        run.start()
        killed = None
        deadline = time.time() + 300
        while killed is None and run.is_alive() and time.time() < deadline:
            workers = _workers()
            lines = cfg.output.read_text().count("\n") if cfg.output.exists() else 0
            if workers and lines >= 8:  # mid-run: some chunks done, others in flight
                os.kill(workers[0], signal.SIGKILL)
                killed = workers[0]
            time.sleep(0.05)
        run.join(timeout=400)
    assert killed is not None, "the kill should land while chunks are running"
    assert not run.is_alive() and "r" in result
    keys = [t.key for t in read_trajectories(cfg.output)]
    assert len(keys) == len(set(keys)) == 40 and set(keys) == set(plan(cfg))
    assert all(t.status == "ok" for t in read_trajectories(cfg.output))


def test_the_local_student_is_refused_on_ray(tmp_path: Path) -> None:
    cfg = GenerateConfig(
        num_tasks=1, agent=AgentSpec(kind="student"), backend="ray", output=tmp_path / "s.jsonl"
    )
    with pytest.raises(ConfigError, match="backend: local"):
        generate(cfg, show_progress=False)


def test_simulated_users_are_counted_once_per_episode_on_ray(tmp_path: Path) -> None:
    """Several episodes share a worker at once: each one's user turns count exactly once."""
    from trajgym.rollouts.config import UserSpec
    from trajgym.testing.fake_openai import scripted_user_responder

    with FakeOpenAIServer(scripted_user_responder) as server:
        user = UserSpec(
            kind="litellm", llm=LLMConfig(model="openai/fake", api_base=server.base_url)
        )
        local = GenerateConfig(
            envs=["trajgym/RetailLite-v0"],
            num_tasks=12,
            concurrency=6,
            user=user,
            output=tmp_path / "local.jsonl",
        )
        want = generate(local, show_progress=False).simulator
        on_ray = local.model_copy(
            update={"output": tmp_path / "ray.jsonl", "backend": "ray", "ray_workers": 2}
        )
        got = generate(on_ray, show_progress=False).simulator
    assert want.turns > 12  # every episode's user spoke more than once
    assert got.counts() == want.counts()


def test_more_workers_than_the_cluster_can_place_is_a_clear_error(tmp_path: Path) -> None:
    cfg = GenerateConfig(num_tasks=64, backend="ray", ray_workers=64, output=tmp_path / "w.jsonl")
    with pytest.raises(ConfigError, match="ray_worker_cpus"):
        generate(cfg, show_progress=False)
    relaxed = cfg.model_copy(update={"ray_workers": 2, "ray_worker_cpus": 0.5})
    assert generate(relaxed, show_progress=False).written == 64
