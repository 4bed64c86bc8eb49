"""What every domain's task generator shares: checking a gold solution, a goal in prose."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trajgym.records.schema import Action, Intent
from trajgym.tools import ToolError, Toolkit


def gold_replays(toolkit: Toolkit[Any], state: object, actions: Sequence[Action]) -> bool:
    """Whether the gold actions run on ``state`` as verification will (a refusal drops a task)."""
    try:
        for action in actions:
            toolkit.tools[action.name](state, **action.arguments)
    except ToolError:
        return False
    return True


def requests_in_prose(intents: Sequence[Intent]) -> list[str]:
    """The requests and their facts, then how to behave: the tail of an LLM user's goal."""
    lines = []
    for n, intent in enumerate(intents, 1):
        facts = "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in intent.slots.items())
        lines.append(f"Request {n}: start with '{intent.request}'. Facts you know: {facts}.")
    lines.append(
        "Do not invent any other facts. Confirm with 'yes' when the agent describes "
        "exactly what you asked for. Handle the requests one at a time, in order."
    )
    return lines
