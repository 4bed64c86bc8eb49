"""A domain's tasks as data plus small samplers: the authoring kit's task half.

A domain names its families (each a sampler that, given a :class:`Draw` over one entity of
the world, returns the user's intent with its slots, gold actions and required outputs, or
None when the entity cannot have it), which families every split plays and which only
``ood`` holds, how chained requests combine, how a user is identified (identity facts and
gold authentication calls), and where its phrasings live. :func:`make_tasks` does the rest:
every family x entity x variant draw from a stream seeded by its own key, goals in prose,
gold actions replayed before a task is emitted, each goal once, the order shuffled.

Phrasings (``phrasings.yaml`` beside the domain) hold, per request kind, a template list per
phrasing set (``A`` for train and test, the held-out ``B`` for ood), plus ``next_intent``
templates that lead a chained request.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Generic, TypeVar

import yaml

from trajgym.envs.goals import drawn_tasks, gold_replays, phrased_intent
from trajgym.records.schema import Action, Intent, Split, Task, UserGoal
from trajgym.tools import Toolkit

W = TypeVar("W")  # the world
E = TypeVar("E")  # the entity a task is about (a customer, a traveller, a patient)


@functools.cache
def phrasings_of(package: str) -> dict[str, Any]:
    """A domain package's ``phrasings.yaml``."""
    return yaml.safe_load(resources.files(package).joinpath("phrasings.yaml").read_text())


@dataclass
class Draw(Generic[W, E]):
    """What a family sampler draws on: the world, one entity, a seeded rng, a phrasing set."""

    world: W
    entity: E
    rng: random.Random
    phrasing: str
    phrasings: Mapping[str, Any]

    def intent(
        self,
        family: str,
        slots: dict[str, str],
        actions: Sequence[Action],
        outputs: tuple[str, ...] = (),
        kind: str | None = None,
    ) -> Intent:
        """An intent of ``family`` opened with one of its (or ``kind``'s) request templates."""
        templates = self.phrasings[kind or family][self.phrasing]
        return phrased_intent(self.rng, templates, family, slots, actions, outputs)


D = TypeVar("D", bound=Draw[Any, Any])
Identity = tuple[dict[str, str], tuple[Action, ...]]  # what the user knows, gold auth calls


@dataclass(frozen=True)
class Family(Generic[D]):
    """One kind of request: its sampler and how hard it is (1-10)."""

    sample: Callable[[D], Intent | None]
    difficulty: int


@dataclass(frozen=True, eq=False)  # hashed by identity: make_tasks caches per spec
class TaskSpec(Generic[W, D]):
    """Everything :func:`make_tasks` needs to draw a domain's tasks."""

    env_id: str
    package: str  # holds phrasings.yaml
    families: Mapping[str, Family[D]]
    in_distribution: tuple[str, ...]  # every split plays these
    held_out: tuple[str, ...]  # only ood plays these (it also plays the rest)
    entities: Callable[[W, Split], Sequence[str]]  # the ids a split draws on, sorted
    draw: Callable[[W, str, random.Random, str], D]  # a Draw for (world, id, rng, phrasing)
    identify: Callable[[D], Identity | None]  # None: this entity cannot be identified
    instruction: Callable[[D, dict[str, str], list[Intent]], str]  # the goal in prose
    toolkit: Toolkit[Any]
    gold_state: Callable[[W], object]  # a fresh state to replay gold actions on
    # Chained requests: family name -> (requests chained, difficulty), drawn from combinable
    # families on different values of chain_slot (say, two orders).
    chains: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    combinable: tuple[str, ...] = ()
    chain_slot: str = ""
    variants: int = 2  # draws per (family, entity)
    held_out_phrasing: str = "B"


def make_tasks(spec: TaskSpec[W, D], world: W, seed: int, split: Split) -> tuple[Task, ...]:
    """Every task of ``split`` (ids ``<split>-<family>-<n>``, stable within a version)."""
    phrasing = spec.held_out_phrasing if split == "ood" else "A"
    families = spec.in_distribution + (spec.held_out if split == "ood" else ())

    def build(family: str, entity: str, rng: random.Random, index: int) -> Task | None:
        return _task(spec, spec.draw(world, entity, rng, phrasing), family, split, index)

    return drawn_tasks(
        seed,
        split,
        families,
        spec.entities(world, split),
        spec.variants,
        build,
        keep=lambda t: gold_replays(spec.toolkit, spec.gold_state(world), t.gold_actions),
        fingerprint=lambda t: t.goal.model_dump_json() + str(t.auth_actions),
    )


def _task(spec: TaskSpec[Any, D], d: D, family: str, split: Split, index: int) -> Task | None:
    if family in spec.chains:
        count, difficulty = spec.chains[family]
        intents = _chained(spec, d, count)
    else:
        one = spec.families[family].sample(d)
        intents, difficulty = ([one] if one else None), spec.families[family].difficulty
    if not intents:
        return None
    identified = spec.identify(d)
    if identified is None:
        return None
    identity, auth = identified
    # Whatever the user's first words do not say, it gives only when asked.
    unsaid = {k for i in intents for k in i.slots if "{" + k + "}" not in i.request}
    goal = UserGoal(
        identity=identity,
        intents=tuple(intents),
        withhold=tuple(sorted(set(identity) | unsaid)),
        instruction=spec.instruction(d, identity, intents),
    )
    return Task(
        id=f"{split}-{family}-{index:05d}",
        env_id=spec.env_id,
        split=split,
        family=family,
        difficulty=difficulty,
        goal=goal,
        auth_actions=auth,
        phrasing_set=d.phrasing,
    )


def _chained(spec: TaskSpec[Any, D], d: D, count: int) -> list[Intent] | None:
    """``count`` intents of different combinable families, on different ``chain_slot``s."""
    intents: list[Intent] = []
    used: set[str] = set()
    for family in d.rng.sample(spec.combinable, k=len(spec.combinable)):
        intent = spec.families[family].sample(d)
        if intent is None or intent.slots.get(spec.chain_slot) in used:
            continue
        if spec.chain_slot in intent.slots:
            used.add(intent.slots[spec.chain_slot])
        if intents:
            lead = d.rng.choice(d.phrasings["next_intent"][d.phrasing])
            intent = intent.model_copy(update={"request": lead.format(request=intent.request)})
        intents.append(intent)
        if len(intents) == count:
            return intents
    return None
