"""The Docker sandbox: one container per episode, from a configurable image.

The container runs trajgym's executor (``executor.py``, bound read-only) as its main
process, as an unprivileged uid, with no network by default, a read-only root filesystem,
the workspace bound at ``/workspace`` and a size-limited ``/tmp``, memory / pids / CPU
limits, all capabilities dropped and ``no-new-privileges``. Commands go to the executor over
the container's attached stdin and come back as JSON lines, as in the process sandbox.
Containers carry a label naming the creating process (pid and start time): they are removed
on close or, for a sandbox dropped unclosed, by its finalizer; those of a crashed or killed
process are swept away by the next one. A :class:`DockerPool` keeps
started containers ready so that acquiring one is fast.
"""

from __future__ import annotations

import contextlib
import os
import queue
import select
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from trajgym.tools.sandbox import orphans
from trajgym.tools.sandbox.base import ExecResult, ExecutorSandbox, SandboxLimits

DEFAULT_IMAGE = os.environ.get("TRAJGYM_SANDBOX_IMAGE", "trajgym-sandbox:bookworm")
LABEL = "trajgym.sandbox.owner"
_EXECUTOR = Path(__file__).with_name("executor.py")
_UID = 65534
_swept = False


def docker_available(image: str = DEFAULT_IMAGE) -> str | None:
    """None if an engine answers and has ``image``; otherwise why not."""
    try:
        import docker

        client = docker.from_env()
        client.ping()
        client.images.get(image)
    except Exception as e:  # noqa: BLE001 (any failure means: not available, and why)
        return f"{type(e).__name__}: {e}"
    return None


class _Held:
    """The container and workspace of one sandbox, released once (by close or a finalizer)."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.container: Any = None
        self.socket: Any = None

    def remove_container(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.socket.close()
            with contextlib.suppress(Exception):
                self.container.remove(force=True)
            self.container = None

    def release(self) -> None:
        self.remove_container()
        shutil.rmtree(self.workspace, ignore_errors=True)


class DockerSandbox(ExecutorSandbox):
    """A container for one episode (see the module docstring)."""

    def __init__(
        self,
        limits: SandboxLimits | None = None,
        image: str = DEFAULT_IMAGE,
        network: bool = False,
        client: Any = None,
    ) -> None:
        import docker

        self.limits = limits or SandboxLimits()
        self.client = client or docker.from_env()
        _sweep_orphans(self.client)
        orphans.sweep_once()
        self.workspace = Path(tempfile.mkdtemp(prefix=orphans.workspace_prefix()))
        self._held = _Held(self.workspace)
        self._release = weakref.finalize(self, self._held.release)
        if os.geteuid() == 0:
            os.chown(self.workspace, _UID, _UID)
            self.owner_uid = _UID
        self.image, self.network = image, network
        self._buffer = b""
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        import docker

        lim, image = self.limits, self.image
        # Created, attached, then started: attaching after the start could miss "ready".
        self._held.container = self.client.containers.create(
            image,
            ["python3", "-I", "-S", "/run/trajgym-executor.py"],
            stdin_open=True,
            network_mode="bridge" if self.network else "none",
            mem_limit=f"{lim.memory_mb}m",
            memswap_limit=f"{lim.memory_mb}m",
            pids_limit=lim.processes,
            nano_cpus=1_000_000_000,
            read_only=True,
            tmpfs={"/tmp": f"size={lim.disk_mb}m,mode=1777"},
            volumes={
                str(self.workspace): {"bind": "/workspace", "mode": "rw"},
                str(_EXECUTOR): {"bind": "/run/trajgym-executor.py", "mode": "ro"},
            },
            working_dir="/workspace",
            user=f"{_UID}:{_UID}",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            ulimits=[
                docker.types.Ulimit(name="cpu", soft=lim.cpu_s, hard=lim.cpu_s),
                docker.types.Ulimit(
                    name="fsize", soft=lim.file_size_mb * 2**20, hard=lim.file_size_mb * 2**20
                ),
                docker.types.Ulimit(name="nofile", soft=lim.open_files, hard=lim.open_files),
            ],
            environment={"HOME": "/workspace", "PATH": "/usr/local/bin:/usr/bin:/bin"},
            labels={LABEL: orphans.owner_tag()},
        )
        socket = self.container.attach_socket(params={"stdin": 1, "stdout": 1, "stream": 1})
        self._held.socket = socket
        self._raw = socket._sock
        self.container.start()
        self._buffer = b""
        self._await_ready(15.0)

    @property
    def container(self) -> Any:
        """The running container (None once closed)."""
        return self._held.container

    def exec(
        self, command: str | list[str], stdin: str = "", timeout_s: float | None = None
    ) -> ExecResult:
        """Run ``command`` in the container's workspace."""
        self._root()
        argv = ["/bin/sh", "-c", command] if isinstance(command, str) else command
        return self._ask_executor(argv, stdin, timeout_s or self.limits.wall_s)

    def close(self) -> None:
        """Remove the container and the workspace (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._release()

    def _send(self, data: bytes) -> None:
        self._raw.sendall(data)

    def _restart_executor(self) -> None:
        self._held.remove_container()  # a fresh container on the same workspace
        self._start()

    def _read_line(self, timeout: float) -> bytes | None:
        """One line of the executor's stdout, from Docker's multiplexed attach stream."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            header = self._read_exact(8, deadline)
            if header is None:
                return None
            size = int.from_bytes(header[4:], "big")
            payload = self._read_exact(size, deadline)
            if payload is None:
                return None
            if header[0] == 1:  # stdout (stderr frames are dropped)
                self._buffer += payload
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _read_exact(self, n: int, deadline: float) -> bytes | None:
        data = b""
        while len(data) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._raw], [], [], left)[0]:
                return None
            chunk = self._raw.recv(n - len(data))
            if not chunk:
                return None
            data += chunk
        return data


class DockerPool:
    """Keeps ``size`` containers started, so that :meth:`acquire` rarely waits for one."""

    def __init__(
        self, size: int = 4, limits: SandboxLimits | None = None, image: str = DEFAULT_IMAGE
    ) -> None:
        import docker

        self.limits, self.image = limits, image
        self.client = docker.from_env()
        self._ready: queue.Queue[DockerSandbox] = queue.Queue()
        self._wanted = threading.Semaphore(size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="trajgym-docker-pool", daemon=True)
        self._thread.start()

    def acquire(self) -> DockerSandbox:
        """A started sandbox (the caller closes it); a fresh one is started in its place."""
        sandbox = self._ready.get()
        self._wanted.release()
        return sandbox

    def close(self) -> None:
        """Stop refilling and remove the idle containers."""
        self._stop.set()
        self._wanted.release()
        self._thread.join()
        while not self._ready.empty():
            self._ready.get().close()

    def _fill(self) -> None:
        while True:
            self._wanted.acquire()
            if self._stop.is_set():
                return
            self._ready.put(DockerSandbox(self.limits, self.image, client=self.client))


def _sweep_orphans(client: Any) -> None:
    """Remove containers left by trajgym processes that no longer exist (a crash)."""
    global _swept
    if _swept:
        return
    _swept = True
    for container in client.containers.list(all=True, filters={"label": LABEL}):
        if not orphans.owner_alive(container.labels.get(LABEL, "")):
            with contextlib.suppress(Exception):
                container.remove(force=True)
