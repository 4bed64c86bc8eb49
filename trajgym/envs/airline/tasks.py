"""Procedural Airline tasks: the families of :mod:`.families`, per split, with ground truth.

Each split draws only on its own users (and so their reservations and payment methods).
The ``ood`` split holds out chained requests (``multi_intent``) and the phrasing set ``B``
entirely. Every task's gold actions are replayed once at generation; a task whose gold
fails is never emitted.
"""

from __future__ import annotations

import functools
import random

from trajgym.envs.airline.families import FAMILIES, Draw, phrasings
from trajgym.envs.airline.records import World
from trajgym.envs.airline.state import AirlineState
from trajgym.envs.airline.tools import AIRLINE_TOOLKIT
from trajgym.envs.airline.world import make_world
from trajgym.envs.goals import act, requests_in_prose
from trajgym.envs.task_spec import Identity, TaskSpec
from trajgym.envs.task_spec import make_tasks as draw_tasks
from trajgym.records.schema import Intent, Split, Task

ENV_ID = "trajgym/Airline-v0"
OOD_FAMILIES = ("multi_intent",)
IN_DISTRIBUTION = tuple(FAMILIES)


def _draw(world: World, user_id: str, rng: random.Random, phrasing: str) -> Draw:
    return Draw(world, world.users[user_id], rng, phrasing, phrasings())


def _identify(d: Draw) -> Identity:
    """Travellers are known by user id, and the agent looks them up to authenticate."""
    return {"user_id": d.user.user_id}, (act("get_user_details", user_id=d.user.user_id),)


def _instruction(d: Draw, identity: dict[str, str], intents: list[Intent]) -> str:
    """The hidden goal in prose, for an LLM playing the user."""
    lines = [
        f"You are {d.user.first_name} {d.user.last_name}, a member of an airline's loyalty "
        f"programme. Your user id is {d.user.user_id}; give it only when asked."
    ]
    return " ".join(lines + requests_in_prose(intents))


AIRLINE_SPEC: TaskSpec[World, Draw] = TaskSpec(
    env_id=ENV_ID,
    package=__package__,
    families=FAMILIES,
    in_distribution=IN_DISTRIBUTION,
    held_out=OOD_FAMILIES,
    entities=lambda world, split: sorted(u for u, x in world.users.items() if x.split == split),
    draw=_draw,
    identify=_identify,
    instruction=_instruction,
    toolkit=AIRLINE_TOOLKIT,
    gold_state=AirlineState,
    chains={"multi_intent": (2, 6)},
    combinable=(
        "flight_status",
        "cancel_reservation",
        "policy_refusal_change",
        "add_baggage",
        "change_cabin",
        "book_flight",
    ),
    chain_slot="reservation_id",
)


@functools.cache
def make_tasks(split: Split, world_seed: int = 0) -> tuple[Task, ...]:
    """All tasks of a split, deterministic for the world (ids are stable within a version)."""
    world = make_world(world_seed)
    return draw_tasks(AIRLINE_SPEC, world, world.seed, split)
