"""Tools over an episode's sandbox: files and commands, for code-and-data domains.

Each tool takes a state with a ``sandbox`` attribute. Sandbox refusals (a path outside the
workspace, a missing file) become :class:`ToolError`, so the agent reads what was wrong and
the episode goes on; a command that fails, times out or floods its output is a normal result
that says so.
"""

from __future__ import annotations

from typing import Any, Protocol

from trajgym.tools.base import ToolError, tool
from trajgym.tools.sandbox.base import ExecResult, Sandbox, SandboxError
from trajgym.tools.toolkit import Toolkit

_MAX_READ = 20_000  # characters of a file shown to the agent


class HasSandbox(Protocol):
    """An episode state that owns a sandbox."""

    sandbox: Sandbox


def _result(r: ExecResult) -> dict[str, Any]:
    out: dict[str, Any] = {"exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr}
    if r.timed_out:
        out["note"] = "killed: the command ran past its time limit"
    elif r.truncated:
        out["note"] = "output truncated"
    return out


@tool
def list_files(state: HasSandbox) -> list[str]:
    """List every file in the workspace."""
    return state.sandbox.list_files()


@tool
def read_file(state: HasSandbox, path: str) -> str:
    """Read a text file of the workspace.

    Args:
        path: Relative path, e.g. 'data/sales.csv'.
    """
    try:
        text = state.sandbox.read_file(path)
    except SandboxError as e:
        raise ToolError(str(e)) from None
    if len(text) > _MAX_READ:
        return text[:_MAX_READ] + f"\n[... {len(text) - _MAX_READ} more characters]"
    return text


@tool
def write_file(state: HasSandbox, path: str, content: str) -> str:
    """Create or overwrite a text file of the workspace.

    Args:
        path: Relative path, e.g. 'report.txt'.
        content: The whole new content.
    """
    try:
        state.sandbox.write_file(path, content)
    except SandboxError as e:
        raise ToolError(str(e)) from None
    return f"Wrote {len(content)} characters to {path}."


@tool
def run_shell(state: HasSandbox, command: str, timeout_s: int = 10) -> dict[str, Any]:
    """Run a shell command in the workspace (no network).

    Args:
        command: The command line, e.g. 'ls -la'.
        timeout_s: Seconds before it is killed (at most 30).
    """
    return _result(state.sandbox.exec(command, timeout_s=min(max(timeout_s, 1), 30)))


@tool
def run_python(state: HasSandbox, code: str) -> dict[str, Any]:
    """Run a Python program in the workspace (no network) and return what it printed.

    Args:
        code: The program's source.
    """
    return _result(state.sandbox.exec(["python3", "-"], stdin=code))


SANDBOX_TOOLKIT: Toolkit[Any] = Toolkit([list_files, read_file, write_file, run_shell, run_python])
