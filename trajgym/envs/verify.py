"""Checks on an episode's transcript: were the required facts told, were writes confirmed.

The state half of verification (gold replay and hash comparison) lives in the env; these
are the transcript halves, shared by every domain.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from trajgym.records.schema import Message

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_AFFIRM = re.compile(
    r"\b(yes|yeah|yep|sure|confirm|confirmed|go ahead|go for it|please do|proceed|do it|correct)\b",
    re.IGNORECASE,
)


def affirms(text: str) -> bool:
    """Whether a user's words say yes (the consent a write needs)."""
    return _AFFIRM.search(text) is not None


def outputs_told(outputs: Sequence[str], messages: Sequence[Message]) -> dict[str, bool]:
    """Whether the assistant told each required output after the tools showed it.

    A fact said before the tools could have shown it is a guess (an untrained model may well
    say "pending" by chance), so it does not count: a word must follow a tool result that
    contains it; a number (often a sum or difference the agent works out) must follow some
    tool result. Numbers match by value within half a cent (so '$1,234.5' tells '1234.50');
    words match case-insensitively as substrings.
    """
    result = {}
    for output in outputs:
        numeric = _NUMBER.fullmatch(output) is not None
        seen = False
        result[output] = False
        for m in messages:
            if m.role == "tool" and not m.text.startswith("Error:"):
                seen = seen or numeric or mentions(m.text, output)
            elif seen and m.role == "assistant" and mentions(m.text, output):
                result[output] = True
                break
    return result


def mentions(text: str, output: str) -> bool:
    """Whether ``text`` says ``output`` (see :func:`outputs_told` for how they match)."""
    if _NUMBER.fullmatch(output):
        value = float(output)
        return any(abs(float(n) - value) < 0.005 for n in _NUMBER.findall(text.replace(",", "")))
    return output.lower() in text.lower()


def unconfirmed_writes(messages: Sequence[Message], writes: Sequence[tuple[int, str]]) -> list[str]:
    """Policy violations: successful writes not preceded by the user's fresh confirmation.

    Args:
        messages: The transcript (system, user, assistant and tool messages).
        writes: (index of the assistant message that made it, tool name) for each successful
            write, in order.
    """
    violations = []
    first_user = next((i for i, m in enumerate(messages) if m.role == "user"), len(messages))
    previous_write = -1
    for index, name in writes:
        consent = next(
            (i for i in range(index - 1, -1, -1) if messages[i].role == "user"), first_user
        )
        if consent <= first_user or consent < previous_write or not affirms(messages[consent].text):
            violations.append(f"'{name}' was called without the user's explicit confirmation")
        previous_write = index
    return violations
