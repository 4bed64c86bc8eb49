"""The scripted expert as a teacher that can act from any state, for on-policy distillation.

:class:`~trajgym.agents.expert.ScriptedExpert` plays a plan from the start; a DAgger-style
teacher must instead say what it would do *at a state the student reached*, where the
student may have asked things in another order, skipped a step or made a wrong call. This
labeler reads the conversation so far, works out which steps of the expert's plan are
already done (identity heard, a call made and answered without error, a confirmation
given, a fact told), and returns the first step that is not, in the expert's own words.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence

from trajgym.agents.base import EpisodeContext
from trajgym.agents.expert import ScriptedExpert, addressed
from trajgym.envs.verify import affirms, outputs_told
from trajgym.records.schema import Action, Intent, Message, Provenance


class ExpertLabeler(ScriptedExpert):
    """Answers ``act(messages)`` for any conversation prefix of the episode's task."""

    @property
    def provenance(self) -> Provenance:
        """Labels from the scripted expert."""
        return Provenance(kind="on_policy_teacher", agent="ExpertLabeler")

    def reset(self, context: EpisodeContext) -> None:
        """Take the task (the expert's ground truth); no plan is fixed in advance."""
        super().reset(context)
        self._plan = None

    def act(self, messages: Sequence[Message]) -> Message:
        """The expert's next step from this state."""
        self._messages = messages
        # Phrasing depends on the state only, so a label is reproducible.
        self.rng = random.Random(self.context.seed * 1000 + len(messages))
        self._calls = sum(len(m.tool_calls or ()) for m in messages)
        task = self.context.task
        if task.auth_actions and not self._authenticated():
            if not all(self._heard(str(v)) for a in task.auth_actions for v in _values(a)):
                return self._say(self._ask_auth(task.auth_actions[0].name))
            return self._call(next(a for a in task.auth_actions if not self._done(a)))
        for intent in task.goal.intents:
            step = self._intent_step(intent)
            if step is not None:
                return step
        return self._say(self._pick(self.words["anything_else"]))

    def _intent_step(self, intent: Intent) -> Message | None:
        """The first undone step of one intent, or None when it is finished."""
        pending = [a for a in intent.actions if not self._done(a)]
        if pending:
            needs = self.words.get("needs", {}).get(intent.kind, ())
            missing = [s for s in needs if not self._heard(intent.slots[s])]
            if missing:
                names = [self.words["slot_names"][s] for s in missing]
                listed = ", ".join(names[:-1]) + (" and " if len(names) > 1 else "") + names[-1]
                return self._say(self._pick(self.words["ask_slots"]).format(slots=listed))
            action = pending[0]
            if action.name in self.confirm_tools and not self._just_confirmed():
                what = self.words["actions"][action.name].format(**addressed(intent.slots))
                return self._say(self._pick(self.words["confirm"]).format(action=what))
            return self._step(intent, action)
        if not self._reported(intent):
            return self._say(
                f"{self._report(intent)} {self._pick(self.words['anything_else'])}".strip()
            )
        return None

    def _authenticated(self) -> bool:
        """The gold authentication was made, or another way the domain accepts succeeded."""
        if all(self._done(a) for a in self.context.task.auth_actions):
            return True
        accepted = set(self.words.get("auth_tools", ()))
        answers = {m.tool_call_id: m.text for m in self._messages if m.role == "tool"}
        return any(
            c.function.name in accepted and not answers.get(c.id, "Error:").startswith("Error:")
            for m in self._messages
            for c in m.tool_calls or ()
        )

    def _done(self, action: Action) -> bool:
        return self._answered_at(action) is not None

    def _answered_at(self, action: Action) -> int | None:
        """Index of the error-free answer to this exact call, if it was made."""
        for i, m in enumerate(self._messages):
            answered = {
                c.id
                for c in m.tool_calls or ()
                if c.function.name == action.name and _same(c.function.arguments, action)
            }
            for j in range(i + 1, len(self._messages)):
                answer = self._messages[j]
                if answer.role != "tool":
                    break
                if answer.tool_call_id in answered and not answer.text.startswith("Error:"):
                    return j
        return None

    def _just_confirmed(self) -> bool:
        """The user's last words agree to what the assistant's last text proposed."""
        if len(self._messages) < 2:
            return False
        asked, answered = self._messages[-2], self._messages[-1]
        return (
            answered.role == "user"
            and affirms(answered.text)
            and asked.role == "assistant"
            and not asked.tool_calls
        )

    def _reported(self, intent: Intent) -> bool:
        if intent.outputs:
            return all(outputs_told(intent.outputs, self._messages).values())
        answers = [self._answered_at(a) for a in intent.actions]
        after = max((i for i in answers if i is not None), default=-1)
        return any(
            m.role == "assistant" and not m.tool_calls and m.text
            for m in self._messages[after + 1 :]
        )


def _values(action: Action) -> list[str]:
    return [str(v) for v in action.arguments.values()]


def _same(arguments: str, action: Action) -> bool:
    try:
        return bool(json.loads(arguments or "{}") == action.arguments)
    except json.JSONDecodeError:
        return False
