"""The desk domains' tasks are what they were when the snapshot was taken: ids, goals, gold.

Recorded trajectories are keyed by task id and compared across runs; a change to how tasks
are drawn must bump the env's version, not silently move them. Retake the snapshot (the
digest of every task's JSON, in order) only together with such a bump.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from trajgym.envs import tasks_of

SNAPSHOT = json.loads((Path(__file__).parent / "snapshots" / "task_digests.json").read_text())


@pytest.mark.parametrize("key", sorted(SNAPSHOT))
def test_tasks_match_their_snapshot(key: str) -> None:
    env_id, split = key.split("|")
    tasks = tasks_of(env_id, split)  # type: ignore[arg-type]
    expected = SNAPSHOT[key]
    assert len(tasks) == expected["count"]
    assert [t.id for t in tasks[:3]] == expected["first"]
    digest = hashlib.sha256("\n".join(t.model_dump_json() for t in tasks).encode()).hexdigest()
    assert digest == expected["sha256"]
