"""Generation: concurrency, resumption after crashes, provider faults, and the store."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from trajgym.config import load_config
from trajgym.errors import ConfigError
from trajgym.llm.client import LLMConfig
from trajgym.records.store import StoreError, TrajectoryStore, read_trajectories
from trajgym.rollouts.config import AgentSpec, GenerateConfig
from trajgym.rollouts.generate import generate, plan
from trajgym.testing.fake_openai import FakeOpenAIServer, FaultPlan, scripted_agent_responder


def keys_in(path: Path) -> list[tuple[str, str, int]]:
    lines = path.read_text().splitlines()
    assert all(json.loads(line) for line in lines), "every line parses"
    return [t.key for t in read_trajectories(path)]


def test_expert_generation_at_concurrency_64(tmp_path: Path) -> None:
    cfg = GenerateConfig(
        num_tasks=150, samples_per_task=2, concurrency=64, output=tmp_path / "t.jsonl"
    )
    report = generate(cfg, show_progress=False)
    keys = keys_in(cfg.output)
    assert len(keys) == len(set(keys)) == 300 == report.written == report.successes
    assert set(keys) == set(plan(cfg))
    assert load_config(GenerateConfig, tmp_path / "t.config.yaml") == cfg
    assert json.loads((tmp_path / "t.summary.json").read_text())["written"] == 300
    again = generate(cfg, show_progress=False)
    assert again.written == 0 and again.skipped == 300 and len(keys_in(cfg.output)) == 300


def test_litellm_teacher_against_a_local_server(tmp_path: Path) -> None:
    with FakeOpenAIServer(scripted_agent_responder, latency_s=0.02) as server:
        cfg = GenerateConfig(
            num_tasks=40,
            concurrency=64,
            output=tmp_path / "t.jsonl",
            agent=AgentSpec(
                kind="litellm", llm=LLMConfig(model="openai/fake", api_base=server.base_url)
            ),
        )
        report = generate(cfg, show_progress=False)
        assert server.stats.max_in_flight > 1
    trajectories = list(read_trajectories(cfg.output))
    assert len(trajectories) == 40 == report.ok
    assert all(
        t.provenance.kind == "teacher" and t.provenance.model == "openai/fake" for t in trajectories
    )
    assert all(t.usage.prompt_tokens > 0 for t in trajectories)
    assert any(m.tool_calls for t in trajectories for m in t.messages)
    assert report.usage.prompt_tokens == sum(t.usage.prompt_tokens for t in trajectories)


def test_thirty_percent_provider_faults_every_episode_once(tmp_path: Path) -> None:
    faults = FaultPlan(rate=0.3, seed=1, timeout_s=0.6)
    with FakeOpenAIServer(scripted_agent_responder, faults=faults) as server:
        llm = LLMConfig(
            model="openai/fake",
            api_base=server.base_url,
            max_attempts=2,
            backoff_s=0.01,
            backoff_max_s=0.02,
            timeout_s=0.3,
        )
        cfg = GenerateConfig(
            num_tasks=120,
            concurrency=64,
            output=tmp_path / "t.jsonl",
            agent=AgentSpec(kind="litellm", llm=llm),
        )
        report = generate(cfg, show_progress=False)
        assert all(server.stats.faults[k] > 0 for k in server.stats.faults)
    trajectories = list(read_trajectories(cfg.output))
    keys = [t.key for t in trajectories]
    assert sorted(keys) == sorted(plan(cfg)) and len(keys) == len(set(keys))
    errors = [t for t in trajectories if t.status == "error"]
    assert errors and report.errors == len(errors) and report.ok == 120 - len(errors)
    assert all(t.reward is None and "attempts" in (t.error or "") for t in errors)


@pytest.mark.timeout(300)
def test_killed_ten_times_then_resumed_equals_uninterrupted(tmp_path: Path) -> None:
    def command(out: Path) -> list[str]:
        return [
            sys.executable,
            "-m",
            "trajgym",
            "generate",
            "--num-tasks",
            "2500",
            "--samples",
            "2",
            "--concurrency",
            "8",
            "-o",
            str(out),
        ]

    env = {**os.environ, "COLUMNS": "120"}
    reference = tmp_path / "reference.jsonl"
    subprocess.run(command(reference), check=True, capture_output=True, env=env)
    crashed = tmp_path / "crashed.jsonl"
    # Kill at random points of the run: when the file passes random sizes (plus a random delay).
    rng = random.Random(7)
    full = reference.stat().st_size
    kills = 0
    for fraction in sorted(rng.uniform(0.05, 0.95) for _ in range(10)):
        proc = subprocess.Popen(
            command(crashed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        while proc.poll() is None and (
            not crashed.exists() or crashed.stat().st_size < fraction * full
        ):
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 10, "every kill should land while the run is going"
    subprocess.run(command(crashed), check=True, capture_output=True, env=env)
    got, want = keys_in(crashed), keys_in(reference)
    assert len(got) == len(set(got)) == 5000
    assert set(got) == set(want)
    by_key = {t.key: t for t in read_trajectories(reference)}
    for t in read_trajectories(crashed):
        assert t.messages == by_key[t.key].messages


def test_torn_tail_is_cut_and_bad_lines_are_named(tmp_path: Path) -> None:
    cfg = GenerateConfig(num_tasks=3, output=tmp_path / "t.jsonl")
    generate(cfg, show_progress=False)
    with cfg.output.open("a") as f:
        f.write('{"schema_version": 1, "env_id": "trajgym/Ret')
    store = TrajectoryStore(cfg.output)
    assert store.repaired_bytes > 0 and len(store.keys) == 3
    store.close()
    assert cfg.output.read_text().endswith("\n")
    lines = cfg.output.read_text().splitlines()
    cfg.output.write_text("\n".join([lines[0], '{"not": "a trajectory"}', lines[1]]) + "\n")
    with pytest.raises(StoreError, match=r"t.jsonl:2 is not a trajgym trajectory"):
        list(read_trajectories(cfg.output))


def test_config_errors_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("split: validation\nagent: {kind: litellm}\n")
    with pytest.raises(ConfigError) as e:
        load_config(GenerateConfig, bad)
    assert "split" in str(e.value) and "needs an 'llm' section" in str(e.value)
    bad.write_text("split: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(GenerateConfig, bad)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(GenerateConfig, None, ["split"])
    with pytest.raises(ConfigError, match="Extra inputs"):
        load_config(GenerateConfig, None, ["colour=red"])
    with pytest.raises(ConfigError, match="Known personas"):
        load_config(GenerateConfig, None, ["personas=[grumpy]"])
    ok = load_config(
        GenerateConfig, None, ["agent.kind=litellm", "agent.llm.model=openai/x", "num_tasks=5"]
    )
    assert ok.agent.llm is not None and ok.agent.llm.model == "openai/x" and ok.num_tasks == 5


def test_a_user_whose_opening_fails_does_not_stop_the_run(tmp_path: Path) -> None:
    """A failed reset (the LLM user's first words never came) is one error episode; the
    next episode on that worker starts on a fresh environment instead of crashing the run."""
    from trajgym.rollouts.config import UserSpec
    from trajgym.testing.fake_openai import scripted_user_responder

    with FakeOpenAIServer(scripted_user_responder, faults=FaultPlan(rate=0.3, seed=1)) as server:
        user = LLMConfig(
            model="openai/fake",
            api_base=server.base_url,
            max_attempts=1,
            backoff_s=0.01,
            timeout_s=2,
        )
        cfg = GenerateConfig(
            envs=["trajgym/RetailLite-v0"],
            num_tasks=8,
            concurrency=1,
            output=tmp_path / "t.jsonl",
            user=UserSpec(kind="litellm", llm=user),
        )
        report = generate(cfg, show_progress=False)
    trajectories = list(read_trajectories(cfg.output))
    failed_starts = [t for t in trajectories if t.status == "error" and not t.messages]
    assert len(trajectories) == 8 and failed_starts
    assert report.errors == sum(t.status == "error" for t in trajectories)
    assert any(t.success for t in trajectories)  # later episodes still ran properly


def test_the_ramp_spreads_the_first_wave_and_the_drain_is_reported(tmp_path: Path) -> None:
    """With ``ramp_s`` the first episodes reach the provider as a stream over that time,
    not as one burst; the report says how long the slots took to empty out at the end."""
    llm_of = lambda url: LLMConfig(model="openai/fake", api_base=url)  # noqa: E731
    arrivals: dict[float, list[float]] = {}
    for ramp in (0.0, 1.0):
        # No episode's second call can arrive before 1.5 s: the first 8 arrivals are the
        # 8 episodes' first calls.
        with FakeOpenAIServer(scripted_agent_responder, latency_s=1.5) as server:
            cfg = GenerateConfig(
                envs=["trajgym/RetailLite-v0"],
                num_tasks=12,
                concurrency=8,
                max_turns=1,  # one call an episode: the test takes seconds
                ramp_s=ramp,
                output=tmp_path / f"ramp{ramp}.jsonl",
                agent=AgentSpec(kind="litellm", llm=llm_of(server.base_url)),
            )
            report = generate(cfg, show_progress=False)
            first = sorted(start for start, _ in server.stats.spans)[:8]
        arrivals[ramp] = [t - first[0] for t in first]
        assert report.written == 12
        assert 0 < report.drain_s < report.episodes_wall_s
    assert arrivals[0.0][-1] < 0.15  # all eight at once
    assert 0.75 < arrivals[1.0][-1] < 1.5  # the eighth starts 7/8 of a second after the first


def test_a_balanced_plan_holds_the_families_equally_and_a_resume_keeps_the_counts(
    tmp_path: Path,
) -> None:
    env = "trajgym/RetailLite-v0"
    first = GenerateConfig(envs=[env], num_tasks=30, output=tmp_path / "t.jsonl")
    balanced = first.model_copy(update={"balance_families": True})
    families = Counter(k[1].split("-")[1] for k in plan(balanced))
    assert sorted(families.values()) == [10, 10, 10], families
    assert Counter(k[1].split("-")[1] for k in plan(first)) != families  # the list's own order
    half = balanced.model_copy(update={"num_tasks": 15})
    generate(half, show_progress=False)
    generate(balanced, show_progress=False)  # resumes: plays only the 15 it lacks
    summary = json.loads((tmp_path / "t.summary.json").read_text())
    assert summary["written"] == 15  # this run's
    stored = summary["stored"]  # the whole harvest's, not only the resumed run's
    assert stored["episodes"] == stored["ok"] == stored["successes"] == 30
    assert stored["per_family"] == dict(families)
