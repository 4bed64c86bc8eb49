"""The scripted expert: solves a task from its ground truth, through the tools, by the policy.

It authenticates the user, asks for every fact it needs that the user has not said yet
(it never uses an id the conversation has not shown), confirms each write, and reports the
facts the user must be told. Its words come from the domain's ``expert.yaml``.

It says its plan before acting: what it will do for the request and why, when it asks for
identity (``plans``), and with a request's first look-up (``lookups``) or a transfer. Each
message records those sentences as ``Message.plan`` (they open its content), so that
:func:`trajgym.rollouts.rationale.strip_rationale` removes exactly them and nothing else.
A confirmation also says what the expert will do, but it is the question the policy
requires before a write: it is not a plan.
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any

import yaml

from trajgym.agents.base import EpisodeContext
from trajgym.envs import domain_package
from trajgym.records.schema import Action, FunctionCall, Intent, Message, Provenance, ToolCall

_MY = re.compile(r"\bmy\b")


def addressed(slots: dict[str, str]) -> dict[str, str]:
    """The user's facts as the agent says them back ('my card' -> 'your card')."""
    return {k: _MY.sub("your", v) for k, v in slots.items()}


@functools.cache
def _phrasebook(env_id: str) -> dict[str, Any]:
    return yaml.safe_load(
        resources.files(domain_package(env_id)).joinpath("expert.yaml").read_text()
    )


class ScriptedExpert:
    """Plays a task's gold solution as a natural, policy-following conversation."""

    def __init__(self) -> None:
        self._plan: Iterator[Message] | None = None
        self._messages: Sequence[Message] = ()
        self._said_plan = ""  # the plan _ask_auth opened its text with, for _say to mark

    @property
    def provenance(self) -> Provenance:
        """An expert trajectory."""
        return Provenance(kind="expert", agent="ScriptedExpert")

    def reset(self, context: EpisodeContext) -> None:
        """Plan the episode from the task's ground truth."""
        self.context = context
        self.words = _phrasebook(context.task.env_id)
        self.rng = random.Random(context.seed)
        self.confirm_tools = set(context.confirm_tools)
        self._calls = 0
        self._said_plan = ""
        self._plan = self._script()

    def act(self, messages: Sequence[Message]) -> Message:
        """The next step of the plan."""
        assert self._plan is not None, "call reset() first"
        self._messages = messages
        return next(self._plan)

    def _script(self) -> Iterator[Message]:
        task = self.context.task
        if task.auth_actions:
            yield self._say(self._ask_auth(task.auth_actions[0].name))
            for action in task.auth_actions:
                yield self._call(action)
        for intent in task.goal.intents:
            needs = self.words.get("needs", {}).get(intent.kind, ())
            missing = [s for s in needs if not self._heard(intent.slots[s])]
            if missing:
                names = [self.words["slot_names"][s] for s in missing]
                listed = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
                yield self._say(self._pick(self.words["ask_slots"]).format(slots=listed))
            for action in intent.actions:
                if action.name in self.confirm_tools:
                    what = self.words["actions"][action.name].format(**addressed(intent.slots))
                    yield self._say(self._pick(self.words["confirm"]).format(action=what))
                yield self._step(intent, action)
            yield self._say(
                f"{self._report(intent)} {self._pick(self.words['anything_else'])}".strip()
            )
        while True:
            yield self._say(self._pick(self.words["anything_else"]))

    def _ask_auth(self, auth_tool: str) -> str:
        """Ask for identity, saying first what the expert will do for the first request.

        The plan in the expert's own words is what lets a student trained on them carry the
        request through to the decision (check, cancel or transfer) turns later.
        """
        intents = self.context.task.goal.intents
        plans = self.words.get("plans", {})
        kind = intents[0].kind if intents else ""
        plan = self._pick(plans.get(kind) or plans.get("default") or [""])
        # The words are the domain's, per authentication tool (its first gold auth call).
        template = self._pick(self.words["ask_auth"][auth_tool])
        self._said_plan = plan.strip() if template.startswith("{plan}") else ""
        return template.format(plan=plan).strip()

    def _step(self, intent: Intent, action: Action) -> Message:
        """The call of ``action``; the intent's first look-up says what it is for."""
        if action.name.startswith("transfer_to_human"):
            return self._call(action, plan=self._pick(self.words["transfer"]))
        lookup = self.words.get("lookups", {}).get(intent.kind)
        if lookup and intent.actions and action == intent.actions[0]:
            return self._call(action, plan=lookup.format(**addressed(intent.slots)))
        return self._call(action)

    def _report(self, intent: Intent) -> str:
        template = self.words["reports"].get(intent.kind, "")
        output = intent.outputs[0] if intent.outputs else ""
        return str(template.format(output=output, **addressed(intent.slots)))

    def _heard(self, value: str) -> bool:
        return any(value in m.text for m in self._messages if m.role == "user")

    def _say(self, text: str) -> Message:
        """A message without a call; it opens with a plan only when _ask_auth just said one."""
        plan, self._said_plan = self._said_plan, ""
        if not (plan and text.startswith(plan + " ")):
            plan = ""
        return Message(role="assistant", content=text, plan=plan or None)

    def _call(self, action: Action, plan: str | None = None) -> Message:
        """The call of ``action``, said with ``plan`` (the message's whole content) if any."""
        self._calls += 1
        arguments = json.dumps(action.arguments, separators=(",", ":"))
        call = ToolCall(
            id=f"call_{self._calls}", function=FunctionCall(name=action.name, arguments=arguments)
        )
        return Message(role="assistant", content=plan, tool_calls=(call,), plan=plan or None)

    def _pick(self, options: Sequence[str]) -> str:
        return options[self.rng.randrange(len(options))]
