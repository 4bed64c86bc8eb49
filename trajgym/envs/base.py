"""The environment API shared by every domain.

The action is the assistant's message (text and/or tool calls); the observation is the new
messages it causes (tool results, or the simulated user's reply). The terminal reward is
verified: the task's gold actions are replayed on a fresh copy of the initial state and the
canonical hashes of the two final states compared, the facts the user had to be told are
looked for in the transcript, and writes must follow the user's confirmation.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, SupportsFloat, TypeVar

import gymnasium
from pydantic import BaseModel, ValidationError

from trajgym.envs.spaces import ActionSpace, Observation, ObservationSpace
from trajgym.envs.store import Store
from trajgym.envs.task_files import load_task_file, register_task_file, task_file_env_id
from trajgym.envs.users.base import STOP, User, UserFactory, get_persona, load_personas
from trajgym.envs.users.scripted import ScriptedUser
from trajgym.envs.verify import outputs_told, unconfirmed_writes
from trajgym.errors import ConfigError, UnknownTaskError
from trajgym.records.schema import SPLITS, Message, Split, StateChange, Task, Verdict
from trajgym.tools import Toolkit

S = TypeVar("S")
MAX_CHANGES = 50  # state changes kept in a verdict; the rest are counted in one entry


class ToolEnv(gymnasium.Env[Observation, Message], Generic[S], abc.ABC):
    """A stateful tool environment with a simulated user; subclasses supply the domain."""

    metadata = {"render_modes": ["ansi"], "render_fps": 1}  # noqa: RUF012 (gymnasium's field)
    env_id: ClassVar[str]
    version: ClassVar[int]
    toolkit: ClassVar[Toolkit[Any]]
    system_prompt: ClassVar[str]
    # Whether tasks can come from a file (a domain whose state a task cannot describe, such
    # as a generated project, says no).
    accepts_task_files: ClassVar[bool] = True

    def __init__(
        self,
        split: str = "train",
        user: UserFactory | str = "scripted",
        persona: str | None = None,
        render_mode: str | None = None,
        tasks: str | Path | None = None,
    ) -> None:
        """An env of ``split``; ``tasks``, a JSONL file to play instead of the domain's own.

        A task file is checked now (see :mod:`trajgym.envs.task_files`) and its tasks play
        under an id of their own. A subclass sets up what ``new_state`` needs before this.
        """
        if split not in SPLITS:
            raise ConfigError(f"Unknown split '{split}'. Choose one of: {', '.join(SPLITS)}.")
        if persona is not None:
            get_persona(persona)  # fail now, not at the first reset
        if isinstance(user, str) and user != "scripted":
            raise ConfigError(f"Unknown user '{user}': pass 'scripted' or a user factory.")
        self.split = split
        self.persona = persona
        self.render_mode = render_mode
        self._user_factory: UserFactory = ScriptedUser if isinstance(user, str) else user
        self.action_space = ActionSpace(list(self.toolkit.tools))
        self.observation_space = ObservationSpace()
        self._tools_json = json.dumps(self.toolkit.schemas)
        self._task_index: dict[str, Task] | None = None
        self.task: Task | None = None
        self.state: S | None = None
        self.user: User | None = None
        self.transcript: list[Message] = []
        self._writes: list[tuple[int, str]] = []
        self._done = True
        self.id = type(self).env_id  # what trajectories record; a task file's own id
        self._file_tasks: tuple[Task, ...] | None = None
        if tasks is not None:
            self._load_task_file(tasks)

    def _load_task_file(self, path: str | Path) -> None:
        if not self.accepts_task_files:
            raise ConfigError(f"{self.env_id} cannot play tasks from a file.")
        played = task_file_env_id(self.env_id, path)
        tasks = load_task_file(path, self.env_id, played, self.toolkit, self.new_state)
        self.id = register_task_file(self.env_id, path)  # once it loads: never a broken env
        self.use_tasks(tasks)

    def use_tasks(self, tasks: Sequence[Task]) -> None:
        """Play ``tasks`` (already checked) instead of the domain's own, from now on."""
        self._file_tasks = tuple(tasks)
        self._task_index = None

    # Domain hooks ----------------------------------------------------------------------------

    @abc.abstractmethod
    def split_tasks(self, split: Split) -> Sequence[Task]:
        """Every task of ``split``, in a fixed order (the domain's hook)."""

    def tasks(self, split: Split | None = None) -> Sequence[Task]:
        """Every task of ``split`` (default: this env's split), in a fixed order."""
        split = split or self.split
        if self._file_tasks is not None:
            return tuple(t for t in self._file_tasks if t.split == split)
        return self.split_tasks(split)

    @abc.abstractmethod
    def new_state(self, task: Task) -> S:
        """A fresh copy of the initial state for ``task``."""

    @abc.abstractmethod
    def digest(self, state: S) -> str:
        """A canonical hash of ``state``."""

    def state_changes(self, state: S) -> list[StateChange]:
        """What the episode changed in ``state`` since reset, in a fixed order.

        Shown to people (the trajectory viewer), never scored; it must stay cheap, as it runs
        at every verification. The default reports nothing.
        """
        return []

    # Gymnasium API ---------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Observation, dict[str, Any]]:
        """Start an episode: ``options`` may name a ``task_id`` and a ``persona``."""
        super().reset(seed=seed)
        options = options or {}
        task = self._pick_task(options.get("task_id"))
        personas = sorted(load_personas())
        name = (
            options.get("persona")
            or self.persona
            or personas[self.np_random.integers(len(personas))]
        )
        persona = get_persona(name)
        user_seed = int(self.np_random.integers(2**31))
        self.task, self.state = task, self.new_state(task)
        self.user = self._user_factory(task, persona, user_seed)
        opening = self.user.opening()
        self.transcript = [Message(role="system", content=self.system_prompt), opening]
        self._writes, self._done = [], False
        info = {
            "task": task,
            "task_id": task.id,
            "persona": persona.name,
            "user_seed": user_seed,
            "system_prompt": self.system_prompt,
            "tools": json.loads(self._tools_json),  # a fresh copy: callers may mutate it
        }
        return Observation(messages=(opening,)), info

    def step(
        self, action: Message | dict[str, Any] | str
    ) -> tuple[Observation, SupportsFloat, bool, bool, dict[str, Any]]:
        """Apply the assistant's message; never raises on malformed model output."""
        if self._done:
            return _error_observation("the episode is over; call reset()"), 0.0, True, False, {}
        message, problem = _coerce_action(action)
        if message is None:
            return _error_observation(problem), 0.0, False, False, {"error": problem}
        self.transcript.append(message)
        termination = "user_stop"
        if message.tool_calls:
            outcomes = self.toolkit.call_all(self.state, message.tool_calls)
            new = [o.message for o in outcomes]
            at = len(self.transcript) - 1
            self._writes += [
                (at, o.tool.name) for o in outcomes if o.ok and o.tool and o.tool.writes
            ]
            terminated = any(o.ok and o.tool is not None and o.tool.ends_episode for o in outcomes)
            termination = "transfer"
        else:
            assert self.user is not None
            reply = self.user.reply(self.transcript)
            new = [reply]
            terminated = STOP in reply.text
        self.transcript.extend(new)
        info: dict[str, Any] = {}
        reward = 0.0
        if terminated:
            self._done = True
            verdict = self.verify()
            reward = verdict.reward
            info = {"verdict": verdict, "termination": termination}
        return Observation(messages=tuple(new)), reward, terminated, False, info

    def verify(self) -> Verdict:
        """Verify the current episode from its final state and transcript."""
        assert self.task is not None and self.state is not None
        gold = self.new_state(self.task)
        for action in self.task.gold_actions:
            self.toolkit.tools[action.name](gold, **action.arguments)
        gold_hash, final_hash = self.digest(gold), self.digest(self.state)
        outputs = outputs_told(self.task.required_outputs, self.transcript)
        violations = tuple(unconfirmed_writes(self.transcript, self._writes))
        state_match = gold_hash == final_hash
        success = state_match and all(outputs.values()) and not violations
        return Verdict(
            reward=1.0 if success else 0.0,
            state_match=state_match,
            outputs=outputs,
            violations=violations,
            final_state_hash=final_hash,
            gold_state_hash=gold_hash,
            changes=bounded_changes(self.state_changes(self.state)),
        )

    def end_episode(self) -> None:
        """Release what the episode holds (a sandbox, say) once its trajectory is recorded."""

    def render(self) -> str | None:
        """With ``render_mode='ansi'``, the transcript as plain text."""
        if self.render_mode != "ansi":
            return None
        return "\n".join(f"[{m.role}] {m.text or m.tool_calls}" for m in self.transcript)

    # Helpers ---------------------------------------------------------------------------------

    def task_by_id(self, task_id: str) -> Task:
        """A task of this env's split by id, or a clear error."""
        if self._task_index is None:
            self._task_index = {t.id: t for t in self.tasks()}
        if task_id not in self._task_index:
            raise UnknownTaskError(
                f"No task '{task_id}' in {self.id} split '{self.split}'. "
                f"Run `trajgym tasks {self.id} --split {self.split}` to list them."
            )
        return self._task_index[task_id]

    def _pick_task(self, task_id: str | None) -> Task:
        if task_id is not None:
            return self.task_by_id(task_id)
        tasks = self.tasks()
        if not tasks:
            raise UnknownTaskError(f"{self.id} has no task in split '{self.split}'.")
        return tasks[int(self.np_random.integers(len(tasks)))]


def bounded_changes(changes: list[StateChange]) -> tuple[StateChange, ...]:
    """At most ``MAX_CHANGES`` changes, the rest counted in a final ``omitted`` entry."""
    if len(changes) <= MAX_CHANGES:
        return tuple(changes)
    left = len(changes) - MAX_CHANGES + 1
    return (*changes[: MAX_CHANGES - 1], StateChange(path=f"{left} more", kind="omitted"))


def overlay_changes(
    store: Store, bases: Mapping[str, Mapping[str, BaseModel]]
) -> list[StateChange]:
    """The records a copy-on-write ``store`` holds that differ from its world ``bases``.

    A modified record shows only its top-level fields that changed; an added or deleted one,
    all of them. Paths are ``<table>/<key>``, sorted by table then key.
    """
    return [
        _record_change(f"{name}/{key}", bases.get(name, {}).get(key), record)
        for name in sorted(store.tables)
        for key, record in store.tables[name].changed()
    ]


def _record_change(path: str, old: BaseModel | None, new: BaseModel | None) -> StateChange:
    if old is None:
        after = None if new is None else new.model_dump(mode="json")
        return StateChange(path=path, kind="added", after=after)
    before = old.model_dump(mode="json")
    if new is None:
        return StateChange(path=path, kind="deleted", before=before)
    after = new.model_dump(mode="json")
    fields = [f for f in after if before.get(f) != after[f]]
    return StateChange(
        path=path,
        kind="modified",
        before={f: before.get(f) for f in fields},
        after={f: after[f] for f in fields},
    )


def _coerce_action(action: object) -> tuple[Message | None, str]:
    """Accept a Message, its dict form, or plain text; explain anything else."""
    if isinstance(action, str):
        return Message(role="assistant", content=action), ""
    try:
        message = action if isinstance(action, Message) else Message.model_validate(action)
    except ValidationError as e:
        return (
            None,
            f"the action is not a valid assistant message: {e.errors(include_url=False)[0]['msg']}",
        )
    if message.role != "assistant":
        return None, f"the action must have role 'assistant', not '{message.role}'"
    return message, ""


def _error_observation(problem: str) -> Observation:
    error = Message(
        role="tool", tool_call_id="invalid_action", name="error", content=f"Error: {problem}"
    )
    return Observation(messages=(error,))
