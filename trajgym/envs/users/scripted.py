"""A deterministic simulated user: pursues the hidden goal turn by turn, without an LLM.

It reads the agent's questions (sentences ending in '?'), answers the slots it recognises
from the facts it knows (which slots a domain has, and how each is asked and said, is the
domain's ``user.yaml``), confirms when asked to, and otherwise moves on to its next intent
or ends the conversation with the stop marker. Same task, persona and seed: same words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from trajgym.envs.domains import domain_package
from trajgym.envs.users.base import STOP, Persona
from trajgym.envs.users.vocabulary import UserWords, user_words
from trajgym.records.schema import Message, Task

# The order matters: a confirmation question often repeats the details being confirmed.
_CONFIRM = re.compile(
    r"\b(confirm|proceed|go ahead|shall i|should i|do you want me to|would you like me to)\b"
    r"|yes/no|yes or no"
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class ScriptedUser:
    """Rule-based user; see the module docstring."""

    def __init__(self, task: Task, persona: Persona, seed: int) -> None:
        self.task = task
        self.persona = persona
        self.words: UserWords = user_words(domain_package(task.env_id))
        self.rng = random.Random(seed)
        self.intent_index = 0
        self.turns = 0
        # A patient user still gives up eventually, so that a stuck agent ends the episode.
        self.max_turns = 8 * len(task.goal.intents) + 6

    def opening(self) -> Message:
        """State the first intent in the persona's words."""
        request = self.task.goal.intents[0].request
        return self._say(self._pick(self.persona.opening).format(request=request))

    def reply(self, transcript: Sequence[Message]) -> Message:
        """Answer the agent's last message."""
        self.turns += 1
        if self.turns >= self.max_turns:
            return self._say(f"{self._pick(self.persona.done)} {STOP}")
        last = next((m for m in reversed(transcript) if m.role == "assistant"), None)
        questions = [
            s.lower() for s in _SENTENCE_END.split(last.text if last else "") if s.endswith("?")
        ]
        if any(_CONFIRM.search(q) for q in questions):
            return self._say(self._pick(self.persona.affirm))
        asked = self.words.asked(questions)
        if asked:
            return self._answer(asked)
        return self._next_intent()

    def _answer(self, slots: list[str]) -> Message:
        facts = self._known_facts()
        said = []
        for name in slots:
            slot = self.words.slots[name]
            other = self.words.slots.get(slot.otherwise or "")
            if (phrase := slot.said(facts)) is not None:
                said.append(phrase)
            elif other is not None and (phrase := other.said(facts)) is not None:
                said.append(slot.otherwise_prefix + phrase)
            # else: a fact this user does not have (a name asked at a desk that knows ids)
        if not said:
            return self._say(self._pick(self.persona.unknown))
        return self._say(self._pick(self.persona.provide).format(facts=" and ".join(said)))

    def _known_facts(self) -> dict[str, str]:
        """Identity plus the slots of every intent so far (the current one wins)."""
        facts = dict(self.task.goal.identity)
        for intent in self.task.goal.intents[: self.intent_index + 1]:
            facts.update(intent.slots)
        return facts

    def _next_intent(self) -> Message:
        self.intent_index += 1
        intents = self.task.goal.intents
        if self.intent_index < len(intents):
            return self._say(intents[self.intent_index].request)
        return self._say(f"{self._pick(self.persona.done)} {STOP}")

    def _pick(self, options: tuple[str, ...]) -> str:
        return options[self.rng.randrange(len(options))]

    @staticmethod
    def _say(text: str) -> Message:
        return Message(role="user", content=text)
