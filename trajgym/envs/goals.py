"""What every domain's task generator shares: the draw loop, gold checks, goals in prose."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from typing import Any

from trajgym.records.schema import Action, Intent, Split, Task
from trajgym.tools import ToolError, Toolkit

# Builds one task of a family for one user from its own random stream; None when this user
# cannot have it (no such order, say). Its last argument is the number of tasks built so far.
Build = Callable[[str, str, random.Random, int], Task | None]


def drawn_tasks(
    world_seed: int,
    split: Split,
    families: Sequence[str],
    users: Sequence[str],
    variants: int,
    build: Build,
    keep: Callable[[Task], bool],
    fingerprint: Callable[[Task], str],
) -> tuple[Task, ...]:
    """Every family x user x variant draw that ``keep`` accepts, each goal once, shuffled.

    Each draw's random stream is seeded by its own key, so adding a family or a user leaves
    the other tasks as they were; the order is shuffled once so the first N mix families.
    """
    tasks: list[Task] = []
    seen: set[str] = set()
    for family in families:
        for user_id in users:
            for variant in range(variants):
                key = f"{world_seed}|{family}|{user_id}|{variant}"
                seed = int(hashlib.sha256(key.encode()).hexdigest()[:12], 16)
                task = build(family, user_id, random.Random(seed), len(tasks))
                if task is None or fingerprint(task) in seen or not keep(task):
                    continue
                seen.add(fingerprint(task))
                tasks.append(task)
    random.Random(f"{world_seed}|{split}").shuffle(tasks)
    return tuple(
        t.model_copy(update={"id": f"{split}-{t.family}-{n:05d}"}) for n, t in enumerate(tasks)
    )


def act(name: str, **arguments: Any) -> Action:
    """A gold tool call."""
    return Action(name=name, arguments=arguments)


def phrased_intent(
    rng: random.Random,
    templates: Sequence[str],
    kind: str,
    slots: dict[str, str],
    actions: Sequence[Action],
    outputs: tuple[str, ...] = (),
) -> Intent:
    """An intent of family ``kind`` whose request is one of ``templates``, filled with slots."""
    return Intent(
        kind=kind,
        request=rng.choice(list(templates)).format(**slots),
        slots=slots,
        actions=tuple(actions),
        outputs=outputs,
    )


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
