"""What every sandbox offers: run a command, read and write workspace files, hash the state.

One sandbox belongs to one episode and is always closed (use it as a context manager).
Paths given to ``read_file`` / ``write_file`` are relative to the workspace; a path that
would leave it is refused with a :class:`SandboxError`, which a tool turns into an error
message for the agent.
"""

from __future__ import annotations

import abc
import hashlib
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

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
