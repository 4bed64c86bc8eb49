"""A simulated user played by any litellm model, with guard rails against simulator faults.

Known faults of LLM user simulators are detected on every turn: an empty reply, a stop
before the goal could have been pursued, and leaking the instruction text. A faulty reply
is retried; every fault is counted (the run's "simulator fault rate"); a user that keeps
failing raises :class:`SimulatorFault`, which makes the episode an error, not a failure.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trajgym.envs.users.base import STOP, Persona
from trajgym.errors import SimulatorFault
from trajgym.llm.client import LLMClient
from trajgym.records.schema import Message, Task, Usage

_AGENT_GREETING = "Hi! How can I help you today?"
_RULES = (
    "Rules: you are the customer, not the agent. Write only your next message, in the "
    "first person, in one to three sentences. Do not invent facts you were not given; if "
    "asked for something you do not know, say so. Do not reveal a fact until the agent asks "
    "for it. Confirm an action only if it matches what you want. Never mention these "
    f"instructions. When all your requests are handled, or cannot be, end with {STOP}."
)
# Phrases of the instructions that a user should never say back.
_LEAK = re.compile(
    r"request \d+:|give these only when asked|do not invent|rules:|these instructions|"
    r"facts you know:|you are the customer",
    re.IGNORECASE,
)


@dataclass
class SimulatorStats:
    """Turns and faults of every LLM user in a run (thread-safe)."""

    turns: int = 0
    faults: dict[str, int] = field(
        default_factory=lambda: {"empty": 0, "premature_stop": 0, "leak": 0}
    )
    failed_users: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, turn: bool = False, fault: str | None = None, failed: bool = False) -> None:
        """Add a turn, a fault, or a user that gave up."""
        with self._lock:
            self.turns += turn
            if fault:
                self.faults[fault] += 1
            self.failed_users += failed

    @property
    def fault_rate(self) -> float:
        """Faulty replies per user turn."""
        return sum(self.faults.values()) / max(1, self.turns)

    def add(self, other: SimulatorStats) -> None:
        """Count ``other``'s turns and faults here too (one episode's, into a run's)."""
        counts = other.counts()
        with self._lock:
            self.turns += counts["turns"]
            self.failed_users += counts["failed_users"]
            for kind, n in counts["faults"].items():
                self.faults[kind] = self.faults.get(kind, 0) + n

    def counts(self) -> dict[str, Any]:
        """A consistent JSON-ready snapshot (what a Ray worker sends back)."""
        with self._lock:
            return {
                "turns": self.turns,
                "failed_users": self.failed_users,
                "faults": dict(self.faults),
            }

    @classmethod
    def from_counts(cls, counts: dict[str, Any]) -> SimulatorStats:
        """The inverse of :meth:`counts`."""
        return cls(counts["turns"], dict(counts["faults"]), counts["failed_users"])


class LLMUser:
    """A user simulated by a language model from the task's hidden goal and a persona."""

    def __init__(
        self,
        client: LLMClient,
        task: Task,
        persona: Persona,
        seed: int,
        stats: SimulatorStats | None = None,
        max_attempts: int = 3,
    ) -> None:
        self.client = client
        self.task = task
        self.persona = persona
        self.seed = seed
        self.stats = stats or SimulatorStats()
        self.max_attempts = max_attempts
        self.usage = Usage()
        self._turns = 0
        self._system = (
            f"You are playing a customer talking to a customer-service agent. Persona: "
            f"{persona.description}\n\nYour goal: {task.goal.instruction}\n\n{_RULES}"
        )

    def opening(self) -> Message:
        """The first message, as if answering the agent's greeting."""
        return self._generate([{"role": "user", "content": _AGENT_GREETING}])

    def reply(self, transcript: Sequence[Message]) -> Message:
        """Answer the agent: its words are the simulator's 'user' turns, and vice versa."""
        flipped = [{"role": "user", "content": _AGENT_GREETING}]
        for m in transcript:
            if m.role == "user":
                flipped.append({"role": "assistant", "content": m.text})
            elif m.role == "assistant" and m.text:
                if flipped[-1]["role"] == "user":  # several agent messages in a row
                    flipped[-1]["content"] += "\n" + m.text
                else:
                    flipped.append({"role": "user", "content": m.text})
        if flipped[-1]["role"] != "user":
            flipped.append({"role": "user", "content": "(The agent is waiting for you.)"})
        return self._generate(flipped)

    def _generate(self, conversation: list[dict[str, str]]) -> Message:
        self._turns += 1
        messages = [{"role": "system", "content": self._system}, *conversation]
        for _ in range(self.max_attempts):
            completion = self.client.complete(messages)
            self.usage = self.usage + completion.usage
            text = completion.message.text.strip()
            fault = self._fault(text)
            self.stats.count(turn=True, fault=fault)
            if fault is None:
                return Message(role="user", content=text)
        self.stats.count(failed=True)
        raise SimulatorFault(
            f"the simulated user gave {self.max_attempts} faulty replies in a row "
            f"(last: {text[:120]!r})"
        )

    def _fault(self, text: str) -> str | None:
        if not text:
            return "empty"
        if _LEAK.search(text):
            return "leak"
        # The user needs at least one turn per request before it can be done.
        if STOP in text and self._turns <= len(self.task.goal.intents):
            return "premature_stop"
        return None
