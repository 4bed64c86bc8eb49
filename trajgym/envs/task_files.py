"""Tasks from a JSONL file, written by a person or a program, each checked when it loads.

A file's tasks play under an environment id of their own (``trajgym/RetailLite.mine-v0`` for
``mine.jsonl`` over ``trajgym/RetailLite-v0``), registered with gymnasium, so trajectories
say which task set they came from and everything that makes an env by id finds the tasks.

One task per line: the :class:`~trajgym.records.schema.Task` fields, where ``env_id`` may be
left out (or name the base env), ``difficulty`` defaults to 1 and ``goal.instruction`` (the
LLM user's goal in prose) is written from the identity and requests when absent. On load,
every gold action must run cleanly on a fresh state; every problem is reported at once, each
naming the file's line, the task and the broken field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium
from pydantic import ValidationError

from trajgym.envs.goals import requests_in_prose
from trajgym.errors import ConfigError
from trajgym.records.schema import Action, FunctionCall, Task, ToolCall
from trajgym.tools import Toolkit

MAX_PROBLEMS = 20  # listed in the error; the rest are counted
_ID = re.compile(r"^(?P<namespace>[\w:.-]+)/(?P<name>[\w:.-]+?)-v(?P<version>\d+)$")


class TaskFileError(ConfigError):
    """A task file that cannot be played; the message lists every problem found."""


def task_file_env_id(base_id: str, path: str | Path) -> str:
    """The id a task file's tasks play under: the base id with the file's stem in it."""
    match = _ID.match(base_id)
    if match is None:
        raise ConfigError(f"'{base_id}' is not a versioned environment id (name-vN).")
    stem = re.sub(r"\W+", "_", Path(path).stem).strip("_") or "tasks"
    return f"{match['namespace']}/{match['name']}.{stem}-v{match['version']}"


def register_task_file(base_id: str, path: str | Path) -> str:
    """Register the environment that plays ``path``'s tasks over ``base_id``; its id.

    Registering the same file again is a no-op; another file with the same stem is refused
    (its trajectories would be indistinguishable).
    """
    if base_id not in gymnasium.registry:
        raise ConfigError(f"Unknown environment '{base_id}'. Run `trajgym envs`.")
    resolved = str(Path(path).resolve())
    if not Path(resolved).is_file():
        raise ConfigError(f"Task file {path} does not exist.")
    env_id = task_file_env_id(base_id, path)
    existing = gymnasium.registry.get(env_id)
    if existing is not None:
        if existing.kwargs.get("tasks") != resolved:
            raise ConfigError(
                f"{env_id} already plays {existing.kwargs.get('tasks')}; rename {path} "
                "so that its trajectories can be told apart."
            )
        return env_id
    base = gymnasium.spec(base_id)
    gymnasium.register(
        id=env_id,
        entry_point=base.entry_point,
        max_episode_steps=base.max_episode_steps,
        kwargs={**base.kwargs, "tasks": resolved},
    )
    return env_id


def load_task_file(
    path: str | Path,
    base_id: str,
    env_id: str,
    toolkit: Toolkit[Any],
    new_state: Callable[[Task], object],
) -> tuple[Task, ...]:
    """Every task of ``path``, checked (see the module docstring); raises TaskFileError."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise TaskFileError(f"Cannot read task file {path}: {e}") from e
    tasks: list[Task] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        task, found = _parsed(line, where, base_id, env_id)
        problems += found
        if task is None:
            continue
        where = f"{where} (task '{task.id}')"
        if task.id in seen:
            problems.append(f"{where}: id: the same id as line {seen[task.id]}")
            continue
        seen[task.id] = number
        found = gold_problems(task, toolkit, new_state)
        problems += [f"{where}: {p}" for p in found]
        if not found:
            tasks.append(task)
    if problems:
        raise TaskFileError(f"Task file {path} has problems:\n  " + listed(problems))
    if not tasks:
        raise TaskFileError(f"Task file {path} holds no task.")
    return tuple(tasks)


def _parsed(line: str, where: str, base_id: str, env_id: str) -> tuple[Task | None, list[str]]:
    """A line's task, or the problems that keep it from being one."""
    try:
        raw = json.loads(line)
    except json.JSONDecodeError as e:
        return None, [f"{where}: not JSON ({e.msg} at column {e.colno})"]
    if not isinstance(raw, dict):
        return None, [f"{where}: a task is a JSON object, not {type(raw).__name__}"]
    label = f"{where} (task '{raw['id']}')" if isinstance(raw.get("id"), str) else where
    if raw.get("env_id", base_id) not in (base_id, env_id):
        return None, [f"{label}: env_id: '{raw['env_id']}' is not {base_id}"]
    goal = raw.get("goal")
    needs_instruction = isinstance(goal, dict) and "instruction" not in goal
    raw = {"difficulty": 1, **raw, "env_id": env_id}
    if isinstance(goal, dict) and needs_instruction:
        raw["goal"] = {**goal, "instruction": ""}
    try:
        task = Task.model_validate(raw)
    except ValidationError as e:
        return None, [
            f"{label}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
            for err in e.errors(include_url=False)
        ]
    if needs_instruction:
        goal_model = task.goal.model_copy(update={"instruction": _instruction(task)})
        task = task.model_copy(update={"goal": goal_model})
    return task, []


def gold_problems(
    task: Task, toolkit: Toolkit[Any], new_state: Callable[[Task], object]
) -> list[str]:
    """Why the task's gold actions do not run cleanly on a fresh state (empty: they do)."""
    state = new_state(task)
    problems = []
    for field, action in _gold_fields(task):
        if action.name not in toolkit.tools:
            known = ", ".join(toolkit.tools)
            problems.append(f"{field}.name: unknown tool '{action.name}' (tools: {known})")
            continue
        outcome = toolkit.call(state, gold_call(action))
        if not outcome.ok:
            error = outcome.message.text
            problems.append(f"{field}: {action.name} fails on a fresh state: {error}")
    return problems


def gold_call(action: Action, call_id: str = "gold") -> ToolCall:
    """A gold action as the tool call a model would send."""
    arguments = json.dumps(action.arguments)
    return ToolCall(id=call_id, function=FunctionCall(name=action.name, arguments=arguments))


def listed(problems: Sequence[str]) -> str:
    """Problems one a line, at most ``MAX_PROBLEMS`` of them (the rest counted)."""
    shown = list(problems[:MAX_PROBLEMS])
    if len(problems) > MAX_PROBLEMS:
        shown.append(f"... and {len(problems) - MAX_PROBLEMS} more")
    return "\n  ".join(shown)


def _gold_fields(task: Task) -> Sequence[tuple[str, Action]]:
    """Each gold action with the field that holds it, in the order they run."""
    fields = [(f"auth_actions.{n}", a) for n, a in enumerate(task.auth_actions)]
    for i, intent in enumerate(task.goal.intents):
        fields += [(f"goal.intents.{i}.actions.{n}", a) for n, a in enumerate(intent.actions)]
    return fields


def _instruction(task: Task) -> str:
    """An LLM user's goal written from the identity and requests (for a file that has none)."""
    facts = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in task.goal.identity.items())
    lines = ["You are a user contacting a service desk."]
    if facts:
        lines.append(f"Your identity: {facts}.")
    return "\n".join(lines + requests_in_prose(task.goal.intents))
