"""Self-generated data: rejection sampling keeps only verified (and judged) episodes."""

from __future__ import annotations

import json
from pathlib import Path

from trajgym.envs import make
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec
from trajgym.rollouts.selfgen import SelfGenConfig, self_generate


def config(tmp_path: Path, **kw) -> SelfGenConfig:
    defaults = dict(
        agent=AgentSpec(kind="expert"),
        samples_per_task=2,
        max_tasks=6,
        tasks_per_round=2,
        output=tmp_path / "self.jsonl",
        concurrency=4,
    )
    return SelfGenConfig(**{**defaults, **kw})


def test_rounds_stop_at_the_target_and_kept_episodes_are_self(tmp_path: Path) -> None:
    cfg = config(tmp_path, target=3, first_task=5)
    counts = self_generate(cfg, show_progress=False)
    kept = list(read_trajectories(cfg.output))
    played = list(read_trajectories(cfg.rollouts_path))
    assert counts["kept"] == len(kept) == 3
    assert counts["tasks"] == 2 and len(played) == 4  # one round of 2 tasks x 2 samples
    assert all(t.provenance.kind == "self" and t.success for t in kept)
    assert all(t.judge is not None and t.judge.passed for t in kept)  # keep="both"
    assert all(t.provenance.kind == "expert" for t in played)  # the raw record is untouched
    train = [t.id for t in make("trajgym/RetailLite-v0").unwrapped.tasks("train")]
    assert {t.task_id for t in played} == set(train[5:7])  # first_task skips the first five
    summary = json.loads(cfg.output.with_suffix(".summary.json").read_text())
    assert summary["keep"] == "both" and summary["judge"] == "embedded"
    # Resuming plays nothing again and keeps the same episodes.
    self_generate(cfg, show_progress=False)
    assert len(list(read_trajectories(cfg.rollouts_path))) == 4
    assert [t.key for t in read_trajectories(cfg.output)] == [t.key for t in kept]


def test_failures_are_never_kept_and_every_task_is_tried(tmp_path: Path) -> None:
    cfg = config(tmp_path, agent=AgentSpec(kind="nothing"), target=5, keep="verified")
    counts = self_generate(cfg, show_progress=False)
    assert counts["kept"] == 0 and counts["verified_failure"] == counts["rollouts"] == 12
    assert counts["tasks"] == 6
    assert list(read_trajectories(cfg.output)) == []
