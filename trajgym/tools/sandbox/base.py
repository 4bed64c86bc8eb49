"""What every sandbox offers: run a command, read and write workspace files, hash the state.

One sandbox belongs to one episode and is always closed (use it as a context manager).
Paths given to ``read_file`` / ``write_file`` are relative to the workspace; a path that
would leave it is refused with a :class:`SandboxError`, which a tool turns into an error
message for the agent.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trajgym.errors import TrajgymError


class SandboxError(TrajgymError):
    """A sandbox request that cannot be carried out (bad path, closed sandbox, no isolation)."""


class SandboxLimits(BaseModel):
    """Resource limits for everything a sandbox runs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wall_s: float = Field(10.0, gt=0, description="Wall-clock limit per command.")
    cpu_s: int = Field(10, ge=1, description="CPU seconds per process.")
    memory_mb: int = Field(512, ge=16, description="Address space per process.")
    processes: int = Field(64, ge=1, description="Processes of the sandbox user.")
    file_size_mb: int = Field(16, ge=1, description="Largest file a process may write.")
    open_files: int = Field(64, ge=8, description="Open file descriptors per process.")
    disk_mb: int = Field(64, ge=1, description="Size of the workspace.")
    output_bytes: int = Field(16_384, ge=256, description="stdout / stderr kept per command.")


@dataclass(frozen=True)
class ExecResult:
    """A finished command."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    truncated: bool = False
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Exit code 0 within the time limit."""
        return self.exit_code == 0 and not self.timed_out


class Sandbox(abc.ABC):
    """An isolated workspace for one episode."""

    workspace: Path
    closed: bool = False
    owner_uid: int | None = None  # files written from the host are given to this user

    @abc.abstractmethod
    def exec(
        self, command: str | list[str], stdin: str = "", timeout_s: float | None = None
    ) -> ExecResult:
        """Run a shell command line (str) or an argv (list) in the workspace."""

    @abc.abstractmethod
    def close(self) -> None:
        """Kill anything still running and remove the workspace (idempotent)."""

    def read_file(self, path: str) -> str:
        """A workspace file's text."""
        target = self._inside(path)
        if not target.is_file():
            raise SandboxError(f"No file '{path}' in the workspace.")
        return target.read_text(errors="replace")

    def write_file(self, path: str, content: str) -> None:
        """Create or replace a workspace file (parent folders are created)."""
        target = self._inside(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        if self.owner_uid is not None:  # so that the sandboxed user may change it
            root = self.workspace.resolve()
            for p in [target, *target.parents]:
                if p == root:
                    break
                os.chown(p, self.owner_uid, self.owner_uid)

    def list_files(self) -> list[str]:
        """Every regular file in the workspace, as sorted relative paths."""
        root = self._root()
        return sorted(
            str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink()
        )

    def snapshot(self) -> str:
        """A hash of the workspace's files (paths and contents), for verification."""
        digest = hashlib.sha256()
        root = self._root()
        for name in self.list_files():
            digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
        return digest.hexdigest()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _root(self) -> Path:
        if self.closed:
            raise SandboxError("The sandbox is closed.")
        return self.workspace.resolve()

    def _inside(self, path: str) -> Path:
        """Resolve ``path`` in the workspace; symlinks and '..' may not lead out of it."""
        root = self._root()
        target = (root / path).resolve()
        if target != root and root not in target.parents:
            raise SandboxError(f"'{path}' is outside the workspace.")
        return target


class ExecutorSandbox(Sandbox):
    """A sandbox whose commands go to trajgym's executor running inside it (``executor.py``).

    Subclasses provide the transport (send bytes, read a line) and a way to start a fresh
    executor; the request / answer protocol and the recovery live here.
    """

    limits: SandboxLimits
    resets: int = 0  # executors restarted after a command killed or stalled them

    @abc.abstractmethod
    def _send(self, data: bytes) -> None:
        """Write to the executor's stdin."""

    @abc.abstractmethod
    def _read_line(self, timeout: float) -> bytes | None:
        """One line of the executor's stdout, or None on EOF or timeout."""

    @abc.abstractmethod
    def _restart_executor(self) -> None:
        """Replace a dead or stalled executor (the workspace stays)."""

    def _await_ready(self, timeout: float) -> None:
        ready = _parse(self._read_line(timeout))
        if ready is None or not ready.get("ready"):
            raise SandboxError("The sandbox's executor did not start.")

    def _ask_executor(self, argv: list[str], stdin: str, wall: float) -> ExecResult:
        """Run one command through the executor; a forged or missing answer resets it."""
        nonce = secrets.token_hex(8)
        request = {
            "nonce": nonce,
            "argv": argv,
            "stdin": stdin,
            "timeout": wall,
            "output_bytes": self.limits.output_bytes,
        }
        started = time.perf_counter()
        line = None
        with contextlib.suppress(OSError):
            self._send((json.dumps(request) + "\n").encode())
            line = self._read_line(wall + 5.0)
        answer = _parse(line)
        if answer is None or answer.pop("nonce", None) != nonce:
            # The command killed its executor (same uid), or it hung: start a fresh one.
            self.resets += 1
            self._restart_executor()
            return ExecResult(
                exit_code=-9,
                stdout="",
                stderr="The command killed or stalled the sandbox; it was restarted.\n",
                timed_out=time.perf_counter() - started >= wall,
                duration_s=time.perf_counter() - started,
            )
        return ExecResult(**answer)


def _parse(line: bytes | None) -> dict[str, Any] | None:
    try:
        value = json.loads(line) if line is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
