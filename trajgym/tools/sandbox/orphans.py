"""What a sandbox leaves when its process dies without closing it, and the sweep that removes it.

A finalizer closes a sandbox that is dropped unclosed, but nothing runs after SIGKILL or the
OOM killer. So every workspace is named after its owner, ``trajgym-ws-<pid>.<start>-XXXX``
(the pid and the kernel's start time of the process that made it: a reused pid does not
match), and the first sandbox a process starts sweeps away the workspaces (mount, folder) and
the sandbox-uid processes (marked with their owner in the environment) of owners that are
gone. Workspaces named before owners were
recorded (``trajgym-ws-XXXX``) are swept once unused for :data:`LEGACY_AGE_S`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "trajgym-ws-"
# Set (to the owner tag) in the environment of every process a sandbox starts; the sandboxed
# command itself gets a cleared environment.
OWNER_ENV = "TRAJGYM_SANDBOX_OWNER"
# Each process sandbox runs as a uid of this range (see process.py).
SANDBOX_UIDS = range(200_000, 260_000)
LEGACY_AGE_S = 3600.0
_NAME = re.compile(rf"^{PREFIX}(?P<pid>\d+)\.(?P<start>\d+)-")
_sweep_lock = threading.Lock()
_swept = False


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name; None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat.rsplit(")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot), None if gone."""
    fields = _stat(pid)
    return int(fields[19]) if fields else None


@functools.cache
def _tag(pid: int) -> str:
    return f"{pid}.{start_time(pid)}"


def owner_tag(pid: int | None = None) -> str:
    """``<pid>.<start time>`` of this process (or of ``pid``): who owns a sandbox."""
    if pid is None:  # every sandbox start and command asks: read /proc once per process
        return _tag(os.getpid())  # keyed by pid, so a forked child gets its own
    return f"{pid}.{start_time(pid)}"


def owner_alive(tag: str) -> bool:
    """Whether the process a tag names still runs (the same process, not a reused pid)."""
    pid, _, start = tag.partition(".")
    if not pid.isdigit():
        return False
    if not start:  # a bare pid, as Docker labels were written before start times
        return Path(f"/proc/{pid}").exists()
    return str(start_time(int(pid))) == start


def workspace_prefix() -> str:
    """The name prefix of this process's workspaces."""
    return f"{PREFIX}{owner_tag()}-"


@dataclass(frozen=True)
class Leftovers:
    """The sandbox resources of one owner that exist now."""

    workspaces: tuple[str, ...]
    mounts: tuple[str, ...]
    processes: tuple[int, ...]

    @property
    def empty(self) -> bool:
        """Nothing left."""
        return not (self.workspaces or self.mounts or self.processes)


def left_by(tag: str) -> Leftovers:
    """What the owner ``tag`` (see :func:`owner_tag`) holds now: workspaces, mounts, processes."""
    prefix = f"{PREFIX}{tag}-"
    folders = Path(tempfile.gettempdir()).glob(prefix + "*")
    return Leftovers(
        workspaces=tuple(sorted(str(p) for p in folders)),
        mounts=tuple(m for m in _workspace_mounts() if Path(m).name.startswith(prefix)),
        processes=tuple(
            pid for pid in _pids() if _uid(pid) in SANDBOX_UIDS and _owner_of(pid) == tag
        ),
    )


@dataclass
class Sweep:
    """What one sweep removed."""

    workspaces: int = 0
    mounts: int = 0
    processes: int = 0


def sweep_once() -> Sweep | None:
    """Sweep at the first call in this process (sandbox starts call it); None afterwards."""
    global _swept
    with _sweep_lock:
        if _swept:
            return None
        _swept = True
    return sweep()


def sweep() -> Sweep:
    """Remove workspaces and sandbox processes whose owner process is gone."""
    done = Sweep(processes=_kill_orphan_processes())
    mounts = set(_workspace_mounts())
    folders = {str(p) for p in Path(tempfile.gettempdir()).glob(PREFIX + "*")}
    for path in sorted(mounts | folders):
        if not _orphaned(Path(path)):
            continue
        if path in mounts and _unmount(path):
            done.mounts += 1
        shutil.rmtree(path, ignore_errors=True)
        done.workspaces += not Path(path).exists()
    if done.workspaces or done.processes:
        log.info("swept orphaned sandboxes: %s", done)
    return done


def _orphaned(workspace: Path) -> bool:
    match = _NAME.match(workspace.name)
    if match:
        return not owner_alive(f"{match['pid']}.{match['start']}")
    with contextlib.suppress(OSError):  # a legacy name: judged by how long it has been unused
        return time.time() - workspace.stat().st_mtime > LEGACY_AGE_S
    return False


def _workspace_mounts() -> list[str]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    points = [line.split()[1] for line in lines if len(line.split()) > 1]
    # Mount points escape spaces and the like as octal; workspace names have none.
    return [p for p in points if Path(p).name.startswith(PREFIX)]


def _unmount(path: str) -> bool:
    if os.geteuid() != 0:
        return False
    return subprocess.run(["umount", "-l", path], capture_output=True, check=False).returncode == 0


def _kill_orphan_processes() -> int:
    """SIGKILL sandbox-uid processes whose owner is gone.

    A sandbox starts its processes with :data:`OWNER_ENV` naming its owner; a sandbox-uid
    process with no live owner on itself or an ancestor was left behind by a dead one.
    """
    if os.geteuid() != 0:
        return 0  # without root, sandboxes run as our own uid, in user namespaces
    killed = 0
    for pid in _pids():
        owner = _owner_of(pid) if _uid(pid) in SANDBOX_UIDS else ""
        if owner is None or (owner and not owner_alive(owner)):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    return killed


def _pids() -> list[int]:
    return [int(e) for e in os.listdir("/proc") if e.isdigit()]


def _uid(pid: int) -> int | None:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def _owner_mark(pid: int) -> str | None:
    with contextlib.suppress(OSError):
        for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            if entry.startswith(OWNER_ENV.encode() + b"="):
                return entry.split(b"=", 1)[1].decode(errors="replace")
    return None


def _owner_of(pid: int) -> str | None:
    """The owner mark on ``pid`` or its nearest marked ancestor; None if there is none."""
    seen: set[int] = set()
    current: int | None = pid
    while current and current not in seen:
        seen.add(current)
        mark = _owner_mark(current)
        if mark is not None:
            return mark
        current = _parent(current)
    return None
