"""Procedural Workspace tasks: each one a project folder, a request and its checks.

Splits never share a task: data is drawn from per-split seeds, and a code task's
combination (module, functions, bug or new name) belongs to one split by its hash. The
``ood`` split holds out the ``csv_join`` family, five catalog functions and the phrasing
set ``B``.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

from trajgym.envs.workspace.code import catalog, fix_bug, rename_function
from trajgym.envs.workspace.data import answer_from_files, csv_join, csv_stat, write_script
from trajgym.envs.workspace.project import Draw, Project
from trajgym.records.schema import Intent, Task, UserGoal

ENV_ID = "trajgym/Workspace-v0"
Family = Callable[[Draw], "tuple[Intent, Project] | None"]
FAMILIES: dict[str, Family] = {
    "csv_stat": csv_stat,
    "answer_from_files": answer_from_files,
    "fix_bug": fix_bug,
    "rename_function": rename_function,
    "write_script": write_script,
}
OOD_FAMILIES: dict[str, Family] = {"csv_join": csv_join}
PER_FAMILY = {"train": 300, "test": 100, "ood": 80}
_DIFFICULTY = {
    "csv_stat": 2,
    "answer_from_files": 1,
    "fix_bug": 4,
    "rename_function": 4,
    "write_script": 3,
    "csv_join": 5,
}


@dataclass(frozen=True)
class TaskSet:
    """A split's tasks, in a fixed order, and the project of each."""

    tasks: tuple[Task, ...]
    projects: dict[str, Project]


def _in_split(split: str) -> Callable[[str], bool]:
    """Code combinations: a quarter belong to test, the rest to train (ood has its own)."""
    if split == "ood":
        return lambda signature: True
    want_test = split == "test"

    def belongs(signature: str) -> bool:
        bucket = int(hashlib.sha256(signature.encode()).hexdigest()[:8], 16) % 4
        return (bucket == 0) == want_test

    return belongs


@functools.cache
def make_tasks(split: str) -> TaskSet:
    """Every task of ``split`` (cached: the projects are generated once per process)."""
    families = dict(FAMILIES) | (OOD_FAMILIES if split == "ood" else {})
    ood_functions = split == "ood"
    functions = tuple(sorted(n for n, f in catalog().items() if f.ood == ood_functions))
    tasks, projects = [], {}
    for family, build in families.items():
        seen: set[str] = set()
        attempt = 0
        while len(seen) < PER_FAMILY[split] + (70 if family in OOD_FAMILIES else 0):
            attempt += 1
            if attempt > 50 * PER_FAMILY[split]:
                raise RuntimeError(f"{family}: too few distinct {split} tasks; widen its draws")
            rng = random.Random(f"workspace|{split}|{family}|{attempt}")
            draw = Draw(rng, "B" if split == "ood" else "A", functions, _in_split(split))
            built = build(draw)
            if built is None:
                continue
            intent, project = built
            key = intent.model_dump_json() + repr(sorted(project.files.items()))
            if key in seen:
                continue  # the same task twice would weigh it double
            seen.add(key)
            task_id = f"{split}-{family}-{len(seen) - 1:04d}"
            tasks.append(_task(task_id, split, family, intent))
            projects[task_id] = project
    return TaskSet(tuple(tasks), projects)


def _task(task_id: str, split: str, family: str, intent: Intent) -> Task:
    instruction = (
        "You are a developer asking a coding assistant for help with your project. "
        f"Your request: {intent.request} Wait for the assistant to do the work; if it reports a "
        "result, thank it and end the conversation. You do not know the answer yourself."
    )
    return Task(
        id=task_id,
        env_id=ENV_ID,
        split=split,
        family=family,
        difficulty=_DIFFICULTY[family],
        goal=UserGoal(identity={}, intents=(intent,), instruction=instruction),
        phrasing_set="B" if split == "ood" else "A",
    )
