"""Procedural Retail tasks: task families of graded difficulty built from the world.

Each split draws only on its own customers (and so their orders and payment methods).
The ``ood`` split holds out two families and the phrasing set ``B`` entirely. Every task's
gold actions are replayed once at generation; a task whose gold fails is never emitted.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

import yaml

from trajgym.envs.goals import drawn_tasks, gold_replays, requests_in_prose
from trajgym.envs.retail.state import RetailState
from trajgym.envs.retail.tools import RETAIL_TOOLKIT
from trajgym.envs.retail.world import Customer, Order, World, make_world, random_address
from trajgym.records.schema import Action, Intent, Split, Task, UserGoal

ENV_ID = "trajgym/Retail-v1"
_REASONS = ("no longer needed", "ordered by mistake")
_OUT_OF_SCOPE = (
    "change the email address on my account",
    "get a price match on something I bought last week",
    "report a package that says delivered but never arrived",
    "apply a coupon code to an order I already placed",
    "close my account for good",
)


@functools.cache
def _phrasings() -> dict[str, dict[str, list[str]]]:
    text = resources.files(__package__).joinpath("phrasings.yaml").read_text()
    return yaml.safe_load(text)


@dataclass
class _Draw:
    """What a family builder draws on: the world, one customer, a seeded rng, a phrasing set."""

    world: World
    customer: Customer
    rng: random.Random
    phrasing: str

    def orders(self, *statuses: str) -> list[Order]:
        found = (self.world.orders[o] for o in self.customer.orders)
        return [o for o in found if not statuses or o.status in statuses]

    def request(self, kind: str, **slots: str) -> str:
        template = self.rng.choice(_phrasings()[kind][self.phrasing])
        return template.format(**slots)

    def intent(
        self,
        family: str,
        kind: str,
        slots: dict[str, str],
        actions: list[Action],
        outputs: tuple[str, ...] = (),
    ) -> Intent:
        request = self.request(kind, **slots)
        return Intent(
            kind=family, request=request, slots=slots, actions=tuple(actions), outputs=outputs
        )


def _act(name: str, **arguments: object) -> Action:
    return Action(name=name, arguments=arguments)


def _money(x: float) -> str:
    return f"{x:.2f}"


# Families: each returns an intent for the customer, or None when it does not apply. ---------


def order_status(d: _Draw) -> Intent | None:
    """The user asks what state an order is in."""
    orders = d.orders()
    if not orders:
        return None
    o = d.rng.choice(orders)
    return d.intent(
        "order_status",
        "order_status",
        {"order_id": o.order_id},
        [_act("get_order_details", order_id=o.order_id)],
        (o.status,),
    )


def cancel_pending_order(d: _Draw) -> Intent | None:
    """The user cancels a pending order, with a reason."""
    orders = d.orders("pending")
    if not orders:
        return None
    o, reason = d.rng.choice(orders), d.rng.choice(_REASONS)
    return d.intent(
        "cancel_pending_order",
        "cancel_pending_order",
        {"order_id": o.order_id, "reason": reason},
        [
            _act("get_order_details", order_id=o.order_id),
            _act("cancel_pending_order", order_id=o.order_id, reason=reason),
        ],
        (_money(o.total),),
    )


def update_default_address(d: _Draw) -> Intent | None:
    """The user changes the default address on their account."""
    new = random_address(d.rng)
    c = d.customer
    fields = new.model_dump(exclude={"state"}) | {"state_code": new.state}
    return d.intent(
        "update_default_address",
        "update_default_address",
        {"address": new.spoken()},
        [
            _act("get_user_details", user_id=c.user_id),
            _act("modify_user_address", user_id=c.user_id, **fields),
        ],
    )


def modify_order_address(d: _Draw) -> Intent | None:
    """The user redirects a pending order to a new address."""
    orders = d.orders("pending")
    if not orders:
        return None
    o, new = d.rng.choice(orders), random_address(d.rng)
    fields = new.model_dump(exclude={"state"}) | {"state_code": new.state}
    return d.intent(
        "modify_order_address",
        "modify_order_address",
        {"order_id": o.order_id, "address": new.spoken()},
        [
            _act("get_order_details", order_id=o.order_id),
            _act("modify_pending_order_address", order_id=o.order_id, **fields),
        ],
    )


def return_items(d: _Draw) -> Intent | None:
    """The user returns some items of a delivered order."""
    orders = d.orders("delivered")
    if not orders:
        return None
    o = d.rng.choice(orders)
    items = d.rng.sample(o.items, k=d.rng.randint(1, len(o.items)))
    paid = next(p.payment_method_id for p in o.payments if p.kind == "payment")
    methods = [m for m in d.customer.payment_methods if m.id == paid or m.source == "gift_card"]
    method = d.rng.choice(methods)
    slots = {
        "order_id": o.order_id,
        "items": " and ".join(i.spoken() for i in items),
        "payment": method.spoken(),
    }
    return d.intent(
        "return_items",
        "return_items",
        slots,
        [
            _act("get_order_details", order_id=o.order_id),
            _act(
                "return_delivered_order_items",
                order_id=o.order_id,
                item_ids=[i.item_id for i in items],
                payment_method_id=method.id,
            ),
        ],
        (_money(sum(i.price for i in items)),),
    )


def _swap(d: _Draw, family: str, status: str, tool: str) -> Intent | None:
    """Exchange (delivered) or modify (pending) one item for another variant of its product."""
    orders = d.orders(status)
    if not orders:
        return None
    o = d.rng.choice(orders)
    item = d.rng.choice(o.items)
    product = d.world.products[item.product_id]
    options = [v for v in product.variants.values() if v.available and v.item_id != item.item_id]
    if not options:
        return None
    new = d.rng.choice(sorted(options, key=lambda v: v.item_id))
    paid = next(p.payment_method_id for p in o.payments if p.kind == "payment")
    method = next(m for m in d.customer.payment_methods if m.id == paid)
    diff = round(new.price - item.price, 2)
    if method.source == "gift_card" and diff > (method.balance or 0):
        return None
    slots = {
        "order_id": o.order_id,
        "items": item.spoken(),
        "new_items": f"the {product.name} ({', '.join(new.options.values())})",
        "payment": method.spoken(),
    }
    return d.intent(
        family,
        family,
        slots,
        [
            _act("get_order_details", order_id=o.order_id),
            _act("get_product_details", product_id=product.product_id),
            _act(
                tool,
                order_id=o.order_id,
                item_ids=[item.item_id],
                new_item_ids=[new.item_id],
                payment_method_id=method.id,
            ),
        ],
        (_money(abs(diff)),),
    )


def exchange_items(d: _Draw) -> Intent | None:
    """The user exchanges an item of a delivered order for another variant."""
    return _swap(d, "exchange_items", "delivered", "exchange_delivered_order_items")


def modify_order_items(d: _Draw) -> Intent | None:
    """The user swaps an item of a pending order for another variant."""
    return _swap(d, "modify_order_items", "pending", "modify_pending_order_items")


def policy_refusal(d: _Draw) -> Intent | None:
    """The user asks for what the policy forbids; the agent must explain and change nothing."""
    wants_cancel = d.rng.random() < 0.5
    statuses = ("processed", "shipped", "delivered") if wants_cancel else ("pending", "shipped")
    orders = d.orders(*statuses)
    if not orders:
        return None
    o = d.rng.choice(orders)
    kind = "policy_refusal_cancel" if wants_cancel else "policy_refusal_return"
    slots = {"order_id": o.order_id, "items": o.items[0].spoken()}
    return d.intent(
        "policy_refusal", kind, slots, [_act("get_order_details", order_id=o.order_id)], (o.status,)
    )


def transfer_to_human(d: _Draw) -> Intent | None:
    """The user wants something out of scope: authenticate, then transfer."""
    wish = d.rng.choice(_OUT_OF_SCOPE)
    return d.intent(
        "transfer_to_human",
        "transfer_to_human",
        {"out_of_scope": wish},
        [
            _act(
                "transfer_to_human_agents",
                summary=f"The user wants to {wish.replace('my ', 'their ')}.",
            )
        ],
    )


def modify_order_payment(d: _Draw) -> Intent | None:
    """The user pays a pending order with another method on file (ood only)."""
    for o in d.orders("pending"):
        paid = [p for p in o.payments if p.kind == "payment"]
        others = [
            m
            for m in d.customer.payment_methods
            if m.id != paid[0].payment_method_id
            and not (m.source == "gift_card" and (m.balance or 0) < o.total)
        ]
        if len(paid) == 1 and others:
            method = d.rng.choice(others)
            return d.intent(
                "modify_order_payment",
                "modify_order_payment",
                {"order_id": o.order_id, "payment": method.spoken()},
                [
                    _act("get_order_details", order_id=o.order_id),
                    _act("get_user_details", user_id=d.customer.user_id),
                    _act(
                        "modify_pending_order_payment",
                        order_id=o.order_id,
                        payment_method_id=method.id,
                    ),
                ],
            )
    return None


_Builder = Callable[[_Draw], "Intent | None"]
_SINGLE: dict[str, tuple[_Builder, int]] = {
    "order_status": (order_status, 1),
    "transfer_to_human": (transfer_to_human, 1),
    "policy_refusal": (policy_refusal, 2),
    "cancel_pending_order": (cancel_pending_order, 2),
    "update_default_address": (update_default_address, 2),
    "modify_order_address": (modify_order_address, 3),
    "return_items": (return_items, 3),
    "exchange_items": (exchange_items, 4),
    "modify_order_items": (modify_order_items, 4),
    "modify_order_payment": (modify_order_payment, 3),
}
_COMBINABLE = (
    "order_status",
    "cancel_pending_order",
    "update_default_address",
    "modify_order_address",
    "return_items",
    "exchange_items",
)
OOD_FAMILIES = ("modify_order_payment", "multi_intent_3")
FAMILIES = (*[f for f in _SINGLE if f not in OOD_FAMILIES], "multi_intent", *OOD_FAMILIES)


@dataclass(frozen=True)
class Suite:
    """Which families a Retail-world environment draws its tasks from."""

    env_id: str
    families: tuple[str, ...]  # in-distribution: train and test
    ood_families: tuple[str, ...]  # held out for the ood split (which also gets the rest)
    combinable: tuple[str, ...]  # what multi-intent tasks chain


RETAIL_SUITE = Suite(ENV_ID, FAMILIES[: -len(OOD_FAMILIES)], OOD_FAMILIES, _COMBINABLE)


def _multi(d: _Draw, n: int, combinable: tuple[str, ...]) -> list[Intent] | None:
    """Chain ``n`` intents of different families on different orders."""
    intents: list[Intent] = []
    used_orders: set[str] = set()
    for family in d.rng.sample(combinable, k=len(combinable)):
        intent = _SINGLE[family][0](d)
        if intent is None or intent.slots.get("order_id") in used_orders:
            continue
        if "order_id" in intent.slots:
            used_orders.add(intent.slots["order_id"])
        if intents:
            lead = d.rng.choice(_phrasings()["next_intent"][d.phrasing])
            intent = intent.model_copy(update={"request": lead.format(request=intent.request)})
        intents.append(intent)
        if len(intents) == n:
            return intents
    return None


def _build(d: _Draw, suite: Suite, family: str, split: Split, index: int) -> Task | None:
    if family.startswith("multi_intent"):
        intents = _multi(d, 3 if family.endswith("_3") else 2, suite.combinable)
        difficulty = 6 if family.endswith("_3") else 5
    else:
        builder, difficulty = _SINGLE[family]
        one = builder(d)
        intents = [one] if one else None
    if not intents:
        return None
    c = d.customer
    identity = {"first_name": c.first_name, "last_name": c.last_name, "zip": c.address.zip}
    remembers_email = d.rng.random() < 0.7 and d.world.user_by_email[c.email] == c.user_id
    if remembers_email:
        identity["email"] = c.email
        auth = (_act("find_user_id_by_email", email=c.email),)
    elif (
        d.world.user_by_name_zip[(c.first_name.lower(), c.last_name.lower(), c.address.zip)]
        == c.user_id
    ):
        auth = (
            _act(
                "find_user_id_by_name_zip",
                first_name=c.first_name,
                last_name=c.last_name,
                zip=c.address.zip,
            ),
        )
    else:
        return None
    goal = UserGoal(
        identity=identity,
        intents=tuple(intents),
        withhold=tuple(
            sorted(
                set(identity)
                | {k for i in intents for k in i.slots if "{" + k + "}" not in i.request}
            )
        ),
        instruction=_instruction(c, identity, intents),
    )
    return Task(
        id=f"{split}-{family}-{index:05d}",
        env_id=suite.env_id,
        split=split,
        family=family,
        difficulty=difficulty,
        goal=goal,
        auth_actions=auth,
        phrasing_set=d.phrasing,
    )


def _instruction(c: Customer, identity: dict[str, str], intents: list[Intent]) -> str:
    """The hidden goal in prose, for an LLM playing the user."""
    known = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in identity.items())
    lines = [
        f"You are {c.first_name} {c.last_name}, a customer of an online store. You know: "
        f"{known}. Give these only when asked."
    ]
    if "email" not in identity:
        lines.append("You do not remember your email address.")
    return " ".join(lines + requests_in_prose(intents))


@functools.cache
def make_tasks(split: Split, world_seed: int = 0, suite: Suite = RETAIL_SUITE) -> tuple[Task, ...]:
    """All tasks of a split, deterministic for the world (ids are stable within a version)."""
    world = make_world(world_seed)
    phrasing = "B" if split == "ood" else "A"
    families = suite.families + (suite.ood_families if split == "ood" else ())
    customers = sorted(u for u, c in world.customers.items() if c.split == split)
    return drawn_tasks(
        world.seed,
        split,
        families,
        customers,
        2,
        lambda family, user_id, rng, n: _build(
            _Draw(world, world.customers[user_id], rng, phrasing), suite, family, split, n
        ),
        keep=lambda t: gold_replays(RETAIL_TOOLKIT, RetailState(world), t.gold_actions),
        fingerprint=lambda t: t.goal.model_dump_json() + str(t.auth_actions),
    )
