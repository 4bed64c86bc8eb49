"""Workspace tools: the sandbox's file and command tools, plus the project's test runner."""

from __future__ import annotations

import re
from typing import Any

from trajgym.tools import Toolkit, tool
from trajgym.tools.sandbox.tools import (
    HasSandbox,
    list_files,
    read_file,
    run_python,
    run_shell,
    write_file,
)

_TIMING = re.compile(r"(Ran \d+ tests?) in [\d.]+s")
_MAX_REPORT = 4_000  # characters of the test report shown to the agent


@tool
def run_tests(state: HasSandbox) -> dict[str, Any]:
    """Run the project's unit tests (python3 -m unittest, tests/ folder) and report the outcome."""
    r = state.sandbox.exec(["python3", "-m", "unittest", "discover", "-s", "tests", "-t", "."])
    # The time a run took would make two runs of one episode differ.
    report = _TIMING.sub(r"\1", r.stderr + r.stdout).strip()
    if len(report) > _MAX_REPORT:
        report = "[...]\n" + report[-_MAX_REPORT:]
    return {"passed": r.ok, "report": report}


WORKSPACE_TOOLKIT: Toolkit[Any] = Toolkit(
    [list_files, read_file, write_file, run_python, run_shell, run_tests]
)
