"""What a Workspace task is made of: the files it starts with and the checks that verify it.

A check runs inside the episode's sandbox after the conversation ends. It never trusts the
agent's files where they could be forged: the project's original tests and data are written
back first, the verifier's tests live in their own folder, and a test run only counts when
the runner prints a fresh random token it received on stdin after every test passed.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

import yaml

from trajgym.envs.goals import phrased_intent
from trajgym.records.schema import Action, Intent

# Loads the verifier's test modules by file path under ``python3 -I``: the workspace is put
# last on sys.path, so no file the agent wrote can shadow the standard library.
VERIFY_RUNNER = """\
import importlib.util, pathlib, sys, unittest

def main():
    token = sys.stdin.readline().strip()
    sys.path.append(".")
    suite = unittest.TestSuite()
    for path in sorted(pathlib.Path("_verify").glob("test_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        suite.addTests(unittest.defaultTestLoader.loadTestsFromModule(module))
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=1).run(suite)
    if result.wasSuccessful() and result.testsRun:
        print(token)

main()
"""


@dataclass(frozen=True)
class Check:
    """One verification of the final workspace.

    ``tests``: ``restore`` files are written back, ``files`` (the verifier's tests, under
    ``_verify/``) are added, and every test must pass. ``script_output``: ``restore`` files are
    written back, ``output`` removed, ``script`` run, and the JSON it writes to ``output`` must
    hold ``expected`` (numbers within 0.01).
    """

    kind: Literal["tests", "script_output"]
    restore: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    script: str = ""
    output: str = ""
    expected: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Project:
    """A task's initial workspace and its checks."""

    files: dict[str, str]
    checks: tuple[Check, ...] = ()


@functools.cache
def _phrasings() -> dict[str, dict[str, list[str]]]:
    return yaml.safe_load(resources.files(__package__).joinpath("phrasings.yaml").read_text())


@dataclass
class Draw:
    """What a family builder draws on: a seeded rng, a phrasing set, the functions it may use."""

    rng: random.Random
    phrasing: str
    functions: tuple[str, ...]
    in_split: Callable[[str], bool] = lambda signature: True

    def intent(
        self,
        family: str,
        slots: dict[str, str],
        actions: list[Action],
        outputs: tuple[str, ...] = (),
        kind: str | None = None,
    ) -> Intent:
        """An intent whose request is a random phrasing of ``kind`` (default: the family)."""
        templates = _phrasings()[kind or family][self.phrasing]
        return phrased_intent(self.rng, templates, family, slots, actions, outputs)
