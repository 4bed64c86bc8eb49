"""An append-only JSONL store of trajectories, keyed by (env, task, sample).

Every record is one line written with a single ``write`` and flushed, so a process killed
at any point leaves at most one torn line at the end; opening the store cuts it off. The
keys already on disk are skipped by a resumed run, so no episode is written twice.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from trajgym.errors import TrajgymError
from trajgym.records.schema import Trajectory

Key = tuple[str, str, int]


class StoreError(TrajgymError):
    """A trajectory file that cannot be read as written by trajgym."""


class TrajectoryStore:
    """Append trajectories to ``path``; knows which keys it already holds."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = cut_torn_tail(self.path)
        self.keys: set[Key] = set()
        self.counts = {"ok": 0, "error": 0, "success": 0}
        for t in read_trajectories(self.path):
            self._note(t)
        self._lock = threading.Lock()
        self._file = self.path.open("a", encoding="utf-8")

    def __contains__(self, key: Key) -> bool:
        return key in self.keys

    def append(self, trajectory: Trajectory) -> bool:
        """Write one trajectory unless its key is already stored; True if written."""
        line = trajectory.model_dump_json() + "\n"
        with self._lock:
            if trajectory.key in self.keys:
                return False
            self._file.write(line)
            self._file.flush()
            self._note(trajectory)
        return True

    def close(self) -> None:
        """Flush to disk and close."""
        with self._lock:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()

    def __enter__(self) -> TrajectoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _note(self, t: Trajectory) -> None:
        self.keys.add(t.key)
        self.counts[t.status] += 1
        self.counts["success"] += t.success


def read_trajectories(path: str | Path) -> Iterator[Trajectory]:
    """Every trajectory in a JSONL file; a bad line is a clear error naming its number."""
    path = Path(path)
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Trajectory.model_validate_json(line)
            except ValidationError as e:
                first = e.errors(include_url=False)[0]
                where = ".".join(str(p) for p in first["loc"])
                raise StoreError(
                    f"{path}:{number} is not a trajgym trajectory ({where}: {first['msg']}). "
                    "Remove or fix that line; the other lines are intact."
                ) from None


def require_input(path: str | Path) -> Path:
    """A trajectory file a user named as input: missing, a folder or empty is an error.

    Stores being written may not exist yet (``read_trajectories`` reads them as empty); an
    input that holds nothing is a mistake to report before anything is written.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a JSONL file" if path.is_dir() else "does not exist"
        raise StoreError(f"Trajectory file '{path}' {what}.")
    with path.open(encoding="utf-8") as f:
        if not any(line.strip() for line in f):
            raise StoreError(f"Trajectory file '{path}' is empty: it holds no trajectories.")
    return path


def read_input(path: str | Path) -> list[Trajectory]:
    """Every trajectory of an input file (see :func:`require_input`)."""
    return list(read_trajectories(require_input(path)))


def cut_torn_tail(path: Path) -> int:
    """Truncate a final line left unfinished by a crash; return the bytes removed."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with path.open("rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - 1))
        if f.read(1) == b"\n":
            return 0
        # Walk back to the last newline; everything after it is the torn record.
        chunk, end = 65536, size
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            data = f.read(end - start)
            cut = data.rfind(b"\n")
            if cut != -1:
                f.truncate(start + cut + 1)
                return size - (start + cut + 1)
            end = start
        f.truncate(0)
        return size
