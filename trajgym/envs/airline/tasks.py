"""Procedural Airline tasks: the families of :mod:`.families`, per split, with ground truth.

Each split draws only on its own users (and so their reservations and payment methods).
The ``ood`` split holds out chained requests (``multi_intent``) and the phrasing set ``B``
entirely. Every task's gold actions are replayed once at generation; a task whose gold
fails is never emitted.
"""

from __future__ import annotations

import functools

from trajgym.envs.airline.families import FAMILIES, Draw, phrasings
from trajgym.envs.airline.records import User
from trajgym.envs.airline.state import AirlineState
from trajgym.envs.airline.tools import AIRLINE_TOOLKIT
from trajgym.envs.airline.world import make_world
from trajgym.envs.goals import act, drawn_tasks, gold_replays, requests_in_prose
from trajgym.records.schema import Intent, Split, Task, UserGoal

ENV_ID = "trajgym/Airline-v0"
OOD_FAMILIES = ("multi_intent",)
IN_DISTRIBUTION = tuple(FAMILIES)
COMBINABLE = (
    "flight_status",
    "cancel_reservation",
    "policy_refusal_change",
    "add_baggage",
    "change_cabin",
    "book_flight",
)
_VARIANTS = 2  # draws per (family, user)


def _multi(d: Draw, n: int) -> list[Intent] | None:
    """Chain ``n`` intents of different families on different reservations."""
    intents: list[Intent] = []
    used: set[str] = set()
    for family in d.rng.sample(COMBINABLE, k=len(COMBINABLE)):
        intent = FAMILIES[family][0](d)
        if intent is None or intent.slots.get("reservation_id", "") in used:
            continue
        used.add(intent.slots.get("reservation_id", ""))
        used.discard("")
        if intents:
            lead = d.rng.choice(phrasings()["next_intent"][d.phrasing])
            intent = intent.model_copy(update={"request": lead.format(request=intent.request)})
        intents.append(intent)
        if len(intents) == n:
            return intents
    return None


def _build(d: Draw, family: str, split: Split, index: int) -> Task | None:
    if family == "multi_intent":
        intents, difficulty = _multi(d, 2), 6
    else:
        builder, difficulty = FAMILIES[family]
        one = builder(d)
        intents = [one] if one else None
    if not intents:
        return None
    identity = {"user_id": d.user.user_id}
    goal = UserGoal(
        identity=identity,
        intents=tuple(intents),
        withhold=tuple(
            sorted(
                set(identity)
                | {k for i in intents for k in i.slots if "{" + k + "}" not in i.request}
            )
        ),
        instruction=_instruction(d.user, intents),
    )
    return Task(
        id=f"{split}-{family}-{index:05d}",
        env_id=ENV_ID,
        split=split,
        family=family,
        difficulty=difficulty,
        goal=goal,
        auth_actions=(act("get_user_details", user_id=d.user.user_id),),
        phrasing_set=d.phrasing,
    )


def _instruction(user: User, intents: list[Intent]) -> str:
    """The hidden goal in prose, for an LLM playing the user."""
    lines = [
        f"You are {user.first_name} {user.last_name}, a member of an airline's loyalty "
        f"programme. Your user id is {user.user_id}; give it only when asked."
    ]
    return " ".join(lines + requests_in_prose(intents))


@functools.cache
def make_tasks(split: Split, world_seed: int = 0) -> tuple[Task, ...]:
    """All tasks of a split, deterministic for the world (ids are stable within a version)."""
    world = make_world(world_seed)
    phrasing = "B" if split == "ood" else "A"
    families = IN_DISTRIBUTION + (OOD_FAMILIES if split == "ood" else ())
    users = sorted(u for u, x in world.users.items() if x.split == split)
    return drawn_tasks(
        world.seed,
        split,
        families,
        users,
        _VARIANTS,
        lambda family, user_id, rng, n: _build(
            Draw(world, world.users[user_id], rng, phrasing), family, split, n
        ),
        keep=lambda t: gold_replays(AIRLINE_TOOLKIT, AirlineState(world), t.gold_actions),
        fingerprint=lambda t: t.goal.model_dump_json(),
    )
