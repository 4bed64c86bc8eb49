"""The embedded sandbox: a local process in its own namespaces, as an unprivileged user.

Each command runs under bubblewrap with new pid, network, ipc and uts namespaces (no
network at all), a root filesystem made of read-only ``/usr`` and a few files of ``/etc``
(the host's home folders, secrets and project are simply not there), a private ``/tmp``,
and the workspace at ``/workspace``. As root, the command then drops to an unprivileged uid
of its own (root would ignore the process limit); rlimits bound CPU time, memory,
processes, file size and open files; a wall-clock timeout kills the whole process tree;
the environment is empty but for PATH and HOME (no API keys). As root, the workspace is a
size-limited tmpfs, so a command cannot fill the host's disk.

Where a piece of this is missing on a machine, :func:`isolation` says which, a warning is
logged when a sandbox starts, and the sandbox refuses to start unless
``allow_weak_isolation=True`` (for trusted code only).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import select
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path

from trajgym.tools.sandbox import orphans
from trajgym.tools.sandbox.base import ExecResult, ExecutorSandbox, SandboxError, SandboxLimits
from trajgym.tools.sandbox.executor import head

log = logging.getLogger(__name__)
# Each sandbox runs as its own unprivileged uid: the process limit counts per uid, so that
# sandboxes sharing one uid would share (and could exhaust) one budget.
_UIDS = itertools.cycle(orphans.SANDBOX_UIDS)
_UID_LOCK = threading.Lock()
_PATH = "/usr/local/bin:/usr/bin:/bin"
_EXECUTOR = Path(__file__).with_name("executor.py")


class _Held:
    """What a sandbox holds outside this process's memory, released exactly once.

    It is apart from the sandbox so that a finalizer can release it when the sandbox is
    garbage-collected unclosed (an env dropped mid-episode, gymnasium's ``check_env``) or
    still open at exit; the finalizer must not refer to the sandbox itself.
    """

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.mounted = False
        self.executor: subprocess.Popen[bytes] | None = None

    def stop_executor(self) -> None:
        if self.executor is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.executor.pid, signal.SIGKILL)
            self.executor.wait()
            for pipe in (self.executor.stdin, self.executor.stdout):
                if pipe is not None:
                    pipe.close()
            self.executor = None

    def release(self) -> None:
        self.stop_executor()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.workspace)], capture_output=True, check=False)
        shutil.rmtree(self.workspace, ignore_errors=True)


@functools.cache
def isolation() -> dict[str, bool]:
    """Which protections this machine gives the process sandbox."""
    root = os.geteuid() == 0
    bwrap = shutil.which("bwrap")
    works = False
    if bwrap:
        probe = [*_bwrap_argv(bwrap, Path(tempfile.gettempdir()), root), "--", "/usr/bin/true"]
        works = subprocess.run(probe, capture_output=True, check=False).returncode == 0
    return {
        "namespaces (bubblewrap: no network, hidden host files)": works,
        "unprivileged uid": not root or shutil.which("setpriv") is not None,
        "workspace size limit (tmpfs, needs root)": root and shutil.which("mount") is not None,
        "resource limits (prlimit)": shutil.which("prlimit") is not None,
    }


class ProcessSandbox(ExecutorSandbox):
    """A workspace plus isolated command execution on this machine."""

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        allow_weak_isolation: bool = False,
        warm: bool = True,
    ) -> None:
        """Create the workspace; ``warm`` starts the namespaces once, not per command."""
        self.limits = limits or SandboxLimits()
        self.isolation = isolation()
        missing = [name for name, ok in self.isolation.items() if not ok]
        if missing:
            message = "process sandbox without: " + "; ".join(missing)
            if not allow_weak_isolation:
                raise SandboxError(
                    f"{message}. Install bubblewrap (apt-get install bubblewrap) and run as "
                    "root, or pass allow_weak_isolation=True for trusted code only."
                )
            log.warning("UNSAFE %s: run trusted code only", message)
        self._root_user = os.geteuid() == 0
        self._strong = not missing
        with _UID_LOCK:
            self.uid = next(_UIDS) if self._root_user else os.geteuid()
        self.owner_uid = self.uid if self._root_user else None
        self._bwrap = shutil.which("bwrap")
        orphans.sweep_once()
        self.workspace = Path(tempfile.mkdtemp(prefix=orphans.workspace_prefix()))
        self._held = _Held(self.workspace)
        self._release = weakref.finalize(self, self._held.release)
        if self._root_user and self.isolation["workspace size limit (tmpfs, needs root)"]:
            options = f"size={self.limits.disk_mb}m,mode=0755,uid={self.uid},gid={self.uid}"
            mounted = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(self.workspace)],
                capture_output=True,
                check=False,
            )
            self._held.mounted = mounted.returncode == 0
        if self._root_user and not self._held.mounted:
            os.chown(self.workspace, self.uid, self.uid)
        self.warm = warm and self._strong
        self._buffer = b""
        if self.warm:
            try:
                self._start_executor()
            except BaseException:
                self.close()  # no mount or folder left behind
                raise

    def exec(
        self, command: str | list[str], stdin: str = "", timeout_s: float | None = None
    ) -> ExecResult:
        """Run ``command`` isolated; the episode gets its exit code and (capped) output."""
        self._root()  # refuses when closed
        command = ["/bin/sh", "-c", command] if isinstance(command, str) else command
        wall = timeout_s or self.limits.wall_s
        if self.warm:
            return self._ask_executor(command, stdin, wall)
        argv = self._argv(command)
        started = time.perf_counter()
        # Output goes to files, not pipes: a command printing gigabytes meets the file-size
        # limit instead of filling this process's memory.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=err,
                env=_environment(),
                start_new_session=True,  # one process group to kill on timeout
            )
            timed_out = False
            try:
                proc.communicate(stdin.encode(), timeout=wall)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap dies; its namespace with it
                proc.wait()
            stdout, cut_out = head(out, self.limits.output_bytes)
            stderr, cut_err = head(err, self.limits.output_bytes)
        return ExecResult(
            exit_code=proc.returncode,
            stdout=stdout,
            stderr=stderr,
            timed_out=timed_out,
            truncated=cut_out or cut_err,
            duration_s=time.perf_counter() - started,
        )

    def close(self) -> None:
        """Remove the workspace (unmounting its tmpfs)."""
        if self.closed:
            return
        self.closed = True
        self._release()

    # The warm executor ----------------------------------------------------------------------

    def _start_executor(self) -> None:
        argv = self._argv(["/usr/bin/python3", "-I", "-S", "/run/trajgym-executor.py"], True)
        self._held.executor = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_environment(),
            start_new_session=True,
            bufsize=0,
        )
        self._buffer = b""
        try:
            self._await_ready(10.0)
        except SandboxError:
            self._stop_executor()
            raise

    def _stop_executor(self) -> None:
        self._held.stop_executor()

    def _send(self, data: bytes) -> None:
        executor = self._held.executor
        assert executor is not None and executor.stdin is not None
        executor.stdin.write(data)

    def _restart_executor(self) -> None:
        self._stop_executor()
        self._start_executor()

    def _read_line(self, timeout: float) -> bytes | None:
        """One line from the executor, or None on EOF or timeout."""
        executor = self._held.executor
        assert executor is not None and executor.stdout is not None
        fd = executor.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _argv(self, command: list[str], executor: bool = False) -> list[str]:
        lim = self.limits
        limits = [
            "prlimit",
            f"--cpu={lim.cpu_s}",
            f"--as={lim.memory_mb * 2**20}",
            f"--nproc={lim.processes}",
            f"--fsize={lim.file_size_mb * 2**20}",
            f"--nofile={lim.open_files}",
            "--core=0",
            "--",
        ]
        bwrap = self._bwrap
        if (
            not self.isolation["namespaces (bubblewrap: no network, hidden host files)"]
            or not bwrap
        ):
            return [*limits, *self._drop(), *command]  # weak: opted in above
        binds = ["--perms", "0755", "--dir", "/run"] if executor else []
        binds += ["--ro-bind", str(_EXECUTOR), "/run/trajgym-executor.py"] if executor else []
        return [
            *limits,
            *_bwrap_argv(bwrap, self.workspace, self._root_user, self.limits.disk_mb),
            *binds,
            "--",
            *self._drop(),
            *command,
        ]

    def _drop(self) -> list[str]:
        if not self._root_user:
            return []
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.uid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ]


def _environment() -> dict[str, str]:
    """What a sandbox's processes start with (bubblewrap clears it for the command)."""
    return {"PATH": _PATH, orphans.OWNER_ENV: orphans.owner_tag()}


def _bwrap_argv(bwrap: str, workspace: Path, root: bool, tmp_mb: int = 64) -> list[str]:
    argv = [bwrap]
    # As root, no user namespace: the command must really become its own uid (setpriv), which
    # a user namespace would not map. Without root, a user namespace gives the rest.
    argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
    argv += [] if root else ["--unshare-user"]
    argv += ["--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        if Path(f"/{link}").is_symlink():
            argv += ["--symlink", f"usr/{link}", f"/{link}"]
        elif Path(f"/{link}").exists():
            argv += ["--ro-bind", f"/{link}", f"/{link}"]
    for etc in ("/etc/alternatives", "/etc/ld.so.cache", "/etc/passwd", "/etc/group"):
        if Path(etc).exists():
            argv += ["--ro-bind", etc, etc]
    argv += [
        "--bind",
        str(workspace),
        "/workspace",
        "--perms",
        "1777",
        "--size",
        str(tmp_mb * 2**20),
        "--tmpfs",
        "/tmp",
    ]
    argv += ["--proc", "/proc", "--dev", "/dev", "--chdir", "/workspace", "--clearenv"]
    argv += ["--setenv", "PATH", _PATH, "--setenv", "HOME", "/workspace"]
    argv += ["--setenv", "PYTHONDONTWRITEBYTECODE", "1"]  # see executor.ENV
    return argv
