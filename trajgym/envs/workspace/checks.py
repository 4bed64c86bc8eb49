"""Running a project's checks in the episode's sandbox, after the conversation."""

from __future__ import annotations

import json
import secrets

from trajgym.envs.workspace.project import VERIFY_RUNNER, Check, Project
from trajgym.tools.sandbox import Sandbox, SandboxError


def run_checks(sandbox: Sandbox, project: Project) -> dict[str, bool]:
    """Whether each check passes, keyed ``<index>:<kind>``."""
    return {f"{i}:{c.kind}": _run(sandbox, c) for i, c in enumerate(project.checks)}


def _run(sandbox: Sandbox, check: Check) -> bool:
    try:
        for path, content in check.restore.items():
            sandbox.write_file(path, content)
        if check.kind == "tests":
            return _tests_pass(sandbox, check)
        return _script_output_matches(sandbox, check)
    except SandboxError:  # e.g. the agent replaced a folder we restore with a file
        return False


def _tests_pass(sandbox: Sandbox, check: Check) -> bool:
    for path, content in check.files.items():
        sandbox.write_file(path, content)
    sandbox.write_file("_verify/runner.py", VERIFY_RUNNER)
    # The token arrives on stdin after the agent's code could have read any file, so only a
    # run whose tests all passed can print it.
    token = secrets.token_hex(16)
    result = sandbox.exec(["python3", "-I", "_verify/runner.py"], stdin=token + "\n", timeout_s=30)
    return result.ok and token in result.stdout.split()


def _script_output_matches(sandbox: Sandbox, check: Check) -> bool:
    sandbox.exec(["rm", "-f", check.output])
    ran = sandbox.exec(["python3", check.script], timeout_s=30)
    if not ran.ok:
        return False
    try:
        produced = json.loads(sandbox.read_file(check.output))
    except (SandboxError, json.JSONDecodeError):
        return False
    if not isinstance(produced, dict) or set(produced) != set(check.expected):
        return False
    return all(
        isinstance(produced[k], int | float) and abs(produced[k] - v) < 0.01
        for k, v in check.expected.items()
    )
