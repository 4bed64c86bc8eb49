"""`trajgym new-env NAME` writes a domain that works as written: its own tests pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from trajgym.cli import app


def test_the_skeleton_passes_its_own_tests(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["new-env", "clinic", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    project = tmp_path / "clinic"
    assert (project / "trajgym_clinic" / "user.yaml").is_file()
    assert (
        'clinic/Clinic-v0" = "trajgym_clinic:DeskEnv"' in (project / "pyproject.toml").read_text()
    )
    env = {**os.environ, "PYTHONPATH": str(project)}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "4 passed" in run.stdout


def test_a_bad_name_or_an_existing_folder_is_refused(tmp_path: Path) -> None:
    bad = CliRunner().invoke(app, ["new-env", "My Desk", "--dir", str(tmp_path)])
    assert bad.exit_code != 0 and "not a domain name" in str(bad.exception)
    (tmp_path / "taken").mkdir()
    taken = CliRunner().invoke(app, ["new-env", "taken", "--dir", str(tmp_path)])
    assert taken.exit_code != 0 and "already exists" in str(taken.exception)
