"""The final-state diff recorded in a verdict: what an episode changed, compact and stable."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ConfigDict

from trajgym.agents.expert import ScriptedExpert
from trajgym.envs import make
from trajgym.envs.base import MAX_CHANGES, ToolEnv, bounded_changes, overlay_changes
from trajgym.envs.store import Store
from trajgym.records.schema import MAX_CHANGE_CHARS, StateChange, Trajectory, Verdict
from trajgym.rollouts.rollout import rollout


def _expert(env_id: str, family: str, split: str = "test", seed: int = 0) -> Trajectory:
    env = make(env_id, split=split)
    task = next(t for t in env.unwrapped.tasks(split) if t.family == family)
    try:
        return rollout(env, ScriptedExpert(), seed=seed, task_id=task.id)
    finally:
        env.close()


def _changes(t: Trajectory) -> dict[str, StateChange]:
    assert t.verdict is not None and t.reward == 1.0, "the expert still solves the task"
    return {c.path: c for c in t.verdict.changes}


@pytest.mark.parametrize("env_id", ["trajgym/Retail-v1", "trajgym/RetailLite-v0"])
def test_retail_cancellation_shows_only_the_fields_that_changed(env_id: str) -> None:
    changes = _changes(_expert(env_id, "cancel_pending_order"))
    (path,) = changes
    change = changes[path]
    assert path.startswith("orders/#W") and change.kind == "modified"
    assert isinstance(change.before, dict) and isinstance(change.after, dict)
    assert change.before["status"] == "pending" and change.after["status"] == "cancelled"
    assert change.before.keys() == change.after.keys() == {"status", "payments", "cancel_reason"}
    assert change.after["payments"][-1]["kind"] == "refund"


def test_a_read_only_episode_changes_nothing() -> None:
    assert _changes(_expert("trajgym/Retail-v1", "order_status")) == {}


def test_same_seed_same_changes_and_they_survive_a_round_trip() -> None:
    first = _expert("trajgym/Airline-v0", "book_flight")
    again = _expert("trajgym/Airline-v0", "book_flight")
    assert first.verdict is not None and again.verdict is not None
    assert first.verdict.changes == again.verdict.changes
    assert Trajectory.model_validate_json(first.model_dump_json()) == first


def test_airline_booking_adds_a_reservation_and_takes_seats() -> None:
    changes = _changes(_expert("trajgym/Airline-v0", "book_flight"))
    kinds = {path.split("/")[0]: c.kind for path, c in changes.items()}
    assert kinds == {"reservations": "added", "flights": "modified", "users": "modified"}
    added = next(c for c in changes.values() if c.kind == "added")
    assert added.before is None and isinstance(added.after, dict)
    assert added.path == f"reservations/{added.after['reservation_id']}"
    seats = next(c for p, c in changes.items() if p.startswith("flights/"))
    assert isinstance(seats.before, dict) and list(seats.before) == ["seats"]
    assert list(changes) == sorted(changes)  # a fixed order: table, then key


def test_transfer_is_an_added_record() -> None:
    changes = _changes(_expert("trajgym/Retail-v1", "transfer_to_human"))
    assert [(p, c.kind) for p, c in changes.items()] == [("transfers/0", "added")]


def test_workspace_fix_is_a_unified_diff_without_the_verifiers_files() -> None:
    changes = _changes(_expert("trajgym/Workspace-v0", "fix_bug"))
    assert changes and all(c.kind == "modified" for c in changes.values())
    path, change = next(iter(changes.items()))
    name = path.removeprefix("files/")
    assert change.diff.startswith(f"--- a/{name}\n+++ b/{name}\n@@ ")
    lines = change.diff.splitlines()
    assert any(x.startswith("-") for x in lines[2:]) and any(x.startswith("+") for x in lines[2:])
    assert not any(p.startswith("files/_verify/") or "__pycache__" in p for p in changes)


def test_workspace_script_is_added_with_its_lines() -> None:
    changes = _changes(_expert("trajgym/Workspace-v0", "write_script"))
    added = [c for c in changes.values() if c.kind == "added"]
    assert added and all(c.diff.startswith("--- /dev/null\n+++ b/") for c in added)


def test_workspace_deleted_and_binary_files() -> None:
    from trajgym.envs.workspace.changes import file_changes
    from trajgym.tools.sandbox import ProcessSandbox

    with ProcessSandbox() as sandbox:
        sandbox.write_file("keep.txt", "same\n")
        sandbox.write_file("edit.txt", "one\ntwo\n")
        (sandbox.workspace / "blob.bin").write_bytes(b"\x00\x01\x02")
        (sandbox.workspace / "__pycache__").mkdir()
        (sandbox.workspace / "__pycache__" / "m.pyc").write_bytes(b"\x00")
        initial = {"keep.txt": "same\n", "edit.txt": "one\n2\n", "gone.txt": "bye\n"}
        changes = {c.path: c for c in file_changes(initial, sandbox)}
    assert list(changes) == ["files/blob.bin", "files/edit.txt", "files/gone.txt"]
    assert changes["files/blob.bin"].kind == "added"
    assert changes["files/blob.bin"].after == "3 bytes" and not changes["files/blob.bin"].diff
    assert "-2\n+two\n" in changes["files/edit.txt"].diff
    assert changes["files/gone.txt"].kind == "deleted"
    assert changes["files/gone.txt"].diff.endswith("+++ /dev/null\n@@ -1 +0,0 @@\n-bye\n")


class _Row(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    size: int = 0


def test_overlay_changes_of_each_kind() -> None:
    base = {"a": _Row(name="a"), "b": _Row(name="b"), "c": _Row(name="c")}
    store = Store({"rows": base})
    table = store.tables["rows"]
    table.put("a", _Row(name="a", size=3))
    table.delete("b")
    table.put("c", _Row(name="c"))  # written back unchanged: no change
    table.put("d", _Row(name="d"))
    changes = overlay_changes(store, {"rows": base})
    assert [(c.path, c.kind, c.before, c.after) for c in changes] == [
        ("rows/a", "modified", {"size": 0}, {"size": 3}),
        ("rows/b", "deleted", {"name": "b", "size": 0}, None),
        ("rows/d", "added", None, {"name": "d", "size": 0}),
    ]


def test_default_hook_reports_nothing() -> None:
    env = make("trajgym/Retail-v1", split="test").unwrapped
    assert ToolEnv.state_changes(env, env.new_state(env.tasks("test")[0])) == []


def test_values_are_bounded_and_reloading_keeps_them_equal() -> None:
    big = {"text": "x" * 10 * MAX_CHANGE_CHARS}
    change = StateChange(path="files/big", kind="modified", before=big, after=1, diff="y" * 10**5)
    assert isinstance(change.before, str) and len(change.before) <= MAX_CHANGE_CHARS
    assert change.before.endswith(f"[{len(json.dumps(big))} characters]")
    assert len(change.diff) <= MAX_CHANGE_CHARS and change.after == 1
    assert StateChange.model_validate_json(change.model_dump_json()) == change


def test_many_changes_end_in_one_omitted_entry() -> None:
    many = [StateChange(path=f"files/{i:03d}", kind="added") for i in range(MAX_CHANGES + 10)]
    kept = bounded_changes(many)
    assert len(kept) == MAX_CHANGES and kept[:-1] == tuple(many[: MAX_CHANGES - 1])
    assert kept[-1] == StateChange(path="11 more", kind="omitted")
    assert bounded_changes(many[:3]) == tuple(many[:3])


def test_old_verdicts_without_changes_still_load() -> None:
    old = '{"reward": 1.0, "state_match": true, "final_state_hash": "h"}'
    assert Verdict.model_validate_json(old).changes == ()
