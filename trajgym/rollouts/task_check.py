"""The check a task file's tasks get above the env layer: the scripted expert solves each.

Loading (:mod:`trajgym.envs.task_files`) already ran every gold action on a fresh state;
this plays each task with the scripted expert and the scripted user, as a built-in task is
played, and reports the tasks it does not solve (an expert without words for a family, a
user who cannot say a fact the expert asks for, a required output no tool shows).
"""

from __future__ import annotations

from typing import Any

from trajgym.agents.expert import ScriptedExpert
from trajgym.envs import tool_env
from trajgym.envs.base import ToolEnv
from trajgym.envs.task_files import TaskFileError, listed
from trajgym.records.schema import SPLITS, Task, Trajectory
from trajgym.rollouts.rollout import rollout


def unsolved_by_expert(env_id: str) -> list[str]:
    """Why the scripted expert fails each task it fails, over every split (empty: none)."""
    probe = tool_env(env_id)
    splits = [s for s in SPLITS if probe.tasks(s)]
    probe.close()
    problems = []
    for split in splits:
        env = tool_env(env_id, split=split)
        try:
            for task in env.tasks():
                t = rollout(env, ScriptedExpert(), seed=0, task_id=task.id)
                if t.reward != 1.0:
                    problems.append(f"task '{task.id}': {_why(t)}")
        finally:
            env.close()
    return problems


def expert_failure(env: ToolEnv[Any], task: Task) -> str | None:
    """Why the scripted expert fails ``task`` in ``env`` (which then plays only it), or None."""
    env.use_tasks((task,))
    try:
        t = rollout(env, ScriptedExpert(), seed=0, task_id=task.id)
    except Exception as e:  # the expert (or the user) cannot even play it: a missing slot
        return f"the scripted expert cannot play it: {type(e).__name__}: {e}"
    return None if t.reward == 1.0 else _why(t)


def check_expert_solves(env_id: str) -> None:
    """Raise TaskFileError naming every task of ``env_id`` the scripted expert fails."""
    problems = unsolved_by_expert(env_id)
    if problems:
        raise TaskFileError(
            f"The scripted expert does not solve {len(problems)} task(s) of {env_id}:\n  "
            + listed(problems)
        )


def _why(t: Trajectory) -> str:
    if t.status == "error":
        return f"the episode failed: {t.error}"
    v = t.verdict
    if v is None:
        return f"it ended without a verdict ({t.termination})"
    reasons = []
    if not v.state_match:
        reasons.append("the final state is not the gold state")
    missing = [o for o, told in v.outputs.items() if not told]
    if missing:
        reasons.append(f"required outputs never told: {missing}")
    if v.violations:
        reasons.append(f"policy violations: {list(v.violations)}")
    return "; ".join(reasons) or f"reward {t.reward}"
