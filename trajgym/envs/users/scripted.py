"""A deterministic simulated user: pursues the hidden goal turn by turn, without an LLM.

It reads the agent's questions (sentences ending in '?'), answers the slots it recognises
from the facts it knows, confirms when asked to, and otherwise moves on to its next intent
or ends the conversation with the stop marker. Same task, persona and seed: same words.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence

from trajgym.envs.users.base import STOP, Persona
from trajgym.records.schema import Message, Task

# The order matters: a confirmation question often repeats the details being confirmed.
_CONFIRM = re.compile(
    r"\b(confirm|proceed|go ahead|shall i|should i|do you want me to|would you like me to)\b"
    r"|yes/no|yes or no"
)
_SLOT_QUESTIONS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (slot, re.compile(pattern))
    for slot, pattern in (
        ("email", r"e-?mail"),
        ("name_zip", r"\b(full name|your name|first name|last name|zip|postal)\b"),
        ("order_id", r"order (id|number)|which order|what order"),
        ("reason", r"\breason\b|\bwhy\b"),
        ("items", r"\b(which|what) (item|product)s?\b|\bitems? (do|would) you\b"),
        ("new_items", r"\b(new|which|what) (option|variant|colou?r|size|version)s?\b|\binstead\b"),
        ("payment", r"payment|\bcard\b|paypal|refund (to|method)|pay (for|with)"),
        ("address", r"address"),
        # The Airline desk's slots: worded so that they never match a Retail question.
        ("user_id", r"\buser ?id\b"),
        ("reservation_id", r"\breservation (id|number|code)\b|\bwhich (reservation|booking)\b"),
        ("flight_number", r"\bflight number\b"),
        ("date", r"\bdate\b|\bwhat day\b"),
        ("origin", r"\bfly(ing)? from\b"),
        ("destination", r"\bfly(ing)? to\b|\bdestination\b"),
        ("cabin", r"\bcabin\b"),
        ("flight", r"\b(which|what) flight\b(?! number)"),
        ("passengers", r"\bwho (is|will be) travel|\bpassengers?\b"),
        ("bags", r"\bbags?\b|\bbaggages?\b|\bluggage\b"),
        ("insurance", r"\binsurance\b"),
    )
)
_FACT_PHRASES = {
    "email": "my email is {email}",
    "name_zip": "my name is {first_name} {last_name} and my zip code is {zip}",
    "order_id": "the order id is {order_id}",
    "reason": "the reason is: {reason}",
    "items": "it's {items}",
    "new_items": "I'd like {new_items} instead",
    "payment": "please use {payment}",
    "address": "the address is {address}",
    "user_id": "my user id is {user_id}",
    "reservation_id": "the reservation id is {reservation_id}",
    "flight_number": "the flight number is {flight_number}",
    "date": "the date is {date}",
    "origin": "I'm flying from {origin}",
    "destination": "I'm flying to {destination}",
    "cabin": "the cabin is {cabin}",
    "flight": "I'll take {flight}",
    "passengers": "I need {passengers}",
    "bags": "I'll have {bags}",
    "insurance": "I'd like it {insurance}",
}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class ScriptedUser:
    """Rule-based user; see the module docstring."""

    def __init__(self, task: Task, persona: Persona, seed: int) -> None:
        self.task = task
        self.persona = persona
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
        asked = [
            slot for slot, pattern in _SLOT_QUESTIONS if any(pattern.search(q) for q in questions)
        ]
        if asked:
            return self._answer(asked)
        return self._next_intent()

    def _answer(self, slots: list[str]) -> Message:
        facts = self._known_facts()
        said, unknown = [], []
        for slot in slots:
            if slot == "email" and "email" not in facts and _sayable("name_zip", facts):
                said.append(
                    "I don't remember my email, but " + _FACT_PHRASES["name_zip"].format(**facts)
                )
            elif _sayable(slot, facts):
                said.append(_FACT_PHRASES[slot].format(**facts))
            else:  # e.g. a name and zip code asked at a desk that knows users by id
                unknown.append(slot)
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


def _sayable(slot: str, facts: dict[str, str]) -> bool:
    """Whether the user knows every fact the slot's phrase needs."""
    fields = [name for _, name, _, _ in string.Formatter().parse(_FACT_PHRASES[slot]) if name]
    return all(name in facts for name in fields)
