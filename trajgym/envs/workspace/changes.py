"""What an episode changed in its workspace: files created, modified and deleted.

Compared against the project the episode started from (the sandbox held exactly its files
after reset), so nothing is copied or snapshotted at reset. Text files get a short unified
diff; binary or very large files are described by their sizes.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Literal

from trajgym.records.schema import StateChange
from trajgym.tools.sandbox import Sandbox

ChangeKind = Literal["added", "modified", "deleted"]
_MAX_DIFF_BYTES = 64_000  # larger files are not diffed: difflib is quadratic at worst
_CONTEXT_LINES = 2
# Python's bytecode cache, written by any test run: the interpreter's doing, not the agent's,
# and it would bury the changes a person is looking for.
_IGNORED_FOLDERS = frozenset({"__pycache__"})


def file_changes(initial: Mapping[str, str], sandbox: Sandbox) -> list[StateChange]:
    """The files of ``sandbox`` that differ from ``initial`` (path -> text), sorted by path."""
    root = sandbox.workspace.resolve()
    final = {
        name: (root / name).read_bytes()
        for name in sandbox.list_files()
        if not _IGNORED_FOLDERS.intersection(name.split("/")[:-1])
    }
    changes = []
    for name in sorted(set(initial) | set(final)):
        before = initial[name].encode() if name in initial else None
        after = final.get(name)
        if before != after:
            changes.append(_file_change(name, before, after))
    return changes


def _file_change(name: str, before: bytes | None, after: bytes | None) -> StateChange:
    kind: ChangeKind = "added" if before is None else "deleted" if after is None else "modified"
    old, new = _text(before), _text(after)
    if old is None or new is None:  # binary or too large: sizes only
        return StateChange(
            path=f"files/{name}",
            kind=kind,
            before=None if before is None else f"{len(before)} bytes",
            after=None if after is None else f"{len(after)} bytes",
        )
    lines = difflib.unified_diff(
        old.splitlines(keepends=True),
        new.splitlines(keepends=True),
        fromfile="/dev/null" if before is None else f"a/{name}",
        tofile="/dev/null" if after is None else f"b/{name}",
        n=_CONTEXT_LINES,
    )
    diff = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return StateChange(path=f"files/{name}", kind=kind, diff=diff)


def _text(data: bytes | None) -> str | None:
    """The file as text; '' for no file; None when it is binary or too large to diff."""
    if data is None:
        return ""
    if len(data) > _MAX_DIFF_BYTES or b"\0" in data:
        return None
    try:
        return data.decode()
    except UnicodeDecodeError:
        return None
