"""Task blueprints an LLM proposes, and the checks that accept one only by execution.

A blueprint is a task without its bookkeeping: who the user is, how they are identified,
and per request the words, the facts, the gold tool calls and what the user must be told.
It becomes a task only if every check passes, in this order (the first failure is the
reason fed back to the proposer):

1. ``unknown_family``: its family and each request's kind are families the env has (the
   scripted expert and user have words for them);
2. ``other_split``: its user is one of the split's own (splits share no entity);
3. ``duplicate``: no existing or already accepted task has the same user and gold calls;
4. ``policy``: nothing is written before the user is identified;
5. ``tool_error`` / ``write_no_change`` / ``read_changed_state``: each gold call runs on a
   fresh state without a tool error, a write changes the state, a read does not;
6. ``output_not_shown``: each required output appears in some tool result;
7. ``expert_fails``: the scripted expert, with the scripted user, solves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trajgym.envs.base import ToolEnv
from trajgym.envs.goals import requests_in_prose
from trajgym.envs.task_files import gold_call
from trajgym.envs.verify import mentions
from trajgym.records.schema import (
    SPLITS,
    Action,
    Intent,
    Message,
    Split,
    Task,
    UserGoal,
)
from trajgym.rollouts.task_check import expert_failure


class BlueprintIntent(BaseModel):
    """One request of the user's."""

    model_config = ConfigDict(extra="forbid")

    kind: str = Field(description="The request's family, one the environment has.")
    request: str = Field(description="The user's opening words for it.")
    slots: dict[str, str] = Field(default_factory=dict, description="Facts given when asked.")
    actions: list[Action] = Field(default_factory=list, description="Gold tool calls, in order.")
    outputs: list[str] = Field(default_factory=list, description="Facts the user must be told.")


class Blueprint(BaseModel):
    """A proposed task: the user, how they are identified, and their requests."""

    model_config = ConfigDict(extra="forbid")

    family: str = Field(description="The task's family (a request kind, or a multi_intent).")
    identity: dict[str, str] = Field(description="What the user knows about themselves.")
    auth_actions: list[Action] = Field(default_factory=list, description="Gold identification.")
    intents: list[BlueprintIntent] = Field(min_length=1)


@dataclass
class Verdict:
    """A blueprint's fate: the task it became, or why it did not."""

    task: Task | None
    reason_kind: str = ""  # one of the checks' names (see the module docstring)
    reason: str = ""


@dataclass
class Checker:
    """The checks of one env and split, with what they compare against."""

    env: ToolEnv[Any]
    split: Split
    families: set[str]
    anchors: list[Task]  # the split's own tasks
    seen: dict[str, str] = field(default_factory=dict)  # fingerprint -> task id

    @classmethod
    def of(cls, env: ToolEnv[Any], split: Split) -> Checker:
        """Checks against every task the env has (all splits: a duplicate anywhere counts).

        The expert's check plays each candidate in ``env``, which then holds only that one.
        """
        tasks = [t for s in SPLITS for t in env.tasks(s)]
        checker = cls(
            env,
            split,
            {i.kind for t in tasks for i in t.goal.intents} | {t.family for t in tasks},
            list(env.tasks(split)),
        )
        for t in tasks:
            checker.seen.setdefault(fingerprint(t), t.id)
        return checker

    def check(self, blueprint: Blueprint, task_id: str) -> Verdict:
        """Accept the blueprint as task ``task_id``, or say why not."""
        task = as_task(blueprint, self.env.env_id, self.split, task_id)
        kinds = {blueprint.family, *(i.kind for i in blueprint.intents)}
        if unknown := sorted(kinds - self.families):
            known = ", ".join(sorted(self.families))
            return Verdict(None, "unknown_family", f"unknown families {unknown} (known: {known})")
        said = {str(v) for a in blueprint.auth_actions for v in a.arguments.values()}
        if not blueprint.identity or not said <= set(blueprint.identity.values()):
            return Verdict(None, "other_split", "auth_actions must use only the identity's facts")
        if not any(blueprint.identity.items() <= t.goal.identity.items() for t in self.anchors):
            return Verdict(None, "other_split", f"the identity is no user of split {self.split}")
        if (twin := self.seen.get(fingerprint(task))) is not None:
            return Verdict(None, "duplicate", f"the same user and gold calls as task {twin}")
        writes = [a.name for a in task.gold_actions if self._writes(a.name)]
        if writes and not task.auth_actions:
            return Verdict(None, "policy", f"{writes[0]} changes the state of an unidentified user")
        kind, reason, shown = self._execute(task)
        if kind:
            return Verdict(None, kind, reason)
        missing = [o for o in task.required_outputs if not any(mentions(m.text, o) for m in shown)]
        if missing:
            return Verdict(None, "output_not_shown", f"outputs {missing} appear in no tool result")
        if (why := expert_failure(self.env, task)) is not None:
            return Verdict(None, "expert_fails", why)
        self.seen[fingerprint(task)] = task.id
        return Verdict(task)

    def forget(self, task: Task) -> None:
        """Take back an accepted task (a reviewer rejected it)."""
        self.seen.pop(fingerprint(task), None)

    def _writes(self, name: str) -> bool:
        tool = self.env.toolkit.tools.get(name)
        return tool is not None and tool.writes

    def _execute(self, task: Task) -> tuple[str, str, list[Message]]:
        """Run the gold calls on a fresh state: (problem kind, reason, the tool results)."""
        state = self.env.new_state(task)
        shown: list[Message] = []
        for n, action in enumerate(task.gold_actions):
            before = self.env.digest(state)
            outcome = self.env.toolkit.call(state, gold_call(action, f"gold_{n}"))
            if not outcome.ok:
                return "tool_error", f"{action.name}{action.arguments}: {outcome.message.text}", []
            changed = self.env.digest(state) != before
            if self._writes(action.name) and not changed:
                return "write_no_change", f"{action.name}{action.arguments} changes nothing", []
            if not self._writes(action.name) and changed:
                return "read_changed_state", f"{action.name} is a read but changed the state", []
            shown.append(outcome.message)
        return "", "", shown


def as_task(blueprint: Blueprint, env_id: str, split: Split, task_id: str) -> Task:
    """The task a blueprint describes (its goal in prose written from it)."""
    intents = tuple(
        Intent(
            kind=i.kind,
            request=i.request,
            slots=i.slots,
            actions=tuple(i.actions),
            outputs=tuple(i.outputs),
        )
        for i in blueprint.intents
    )
    unsaid = {k for i in intents for k, v in i.slots.items() if v not in i.request}
    facts = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in blueprint.identity.items())
    instruction = " ".join([f"You are a user; you know: {facts}.", *requests_in_prose(intents)])
    actions = len(blueprint.auth_actions) + sum(len(i.actions) for i in intents)
    return Task(
        id=task_id,
        env_id=env_id,
        split=split,
        family=blueprint.family,
        difficulty=max(1, min(10, actions - 1)),
        goal=UserGoal(
            identity=blueprint.identity,
            intents=intents,
            withhold=tuple(sorted(set(blueprint.identity) | unsaid)),
            instruction=instruction,
        ),
        auth_actions=tuple(blueprint.auth_actions),
        phrasing_set="B" if split == "ood" else "A",
    )


def fingerprint(task: Task) -> str:
    """A task's user and gold calls: two tasks alike in both are duplicates."""
    calls = [(a.name, json.dumps(a.arguments, sort_keys=True)) for a in task.gold_actions]
    return json.dumps([sorted(task.goal.identity.items()), calls])


def blueprint_of(task: Task) -> dict[str, Any]:
    """A task as a blueprint (the example shown to the proposer)."""
    return Blueprint(
        family=task.family,
        identity=task.goal.identity,
        auth_actions=list(task.auth_actions),
        intents=[
            BlueprintIntent(
                kind=i.kind,
                request=i.request,
                slots=i.slots,
                actions=list(i.actions),
                outputs=list(i.outputs),
            )
            for i in task.goal.intents
        ],
    ).model_dump(mode="json")


def tally(verdicts: Iterable[Verdict]) -> dict[str, int]:
    """Rejections by kind."""
    counts: dict[str, int] = {}
    for v in verdicts:
        if v.task is None:
            counts[v.reason_kind] = counts.get(v.reason_kind, 0) + 1
    return dict(sorted(counts.items()))
