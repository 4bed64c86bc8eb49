"""Procedural Retail tasks: task families of graded difficulty built from the world.

Each split draws only on its own customers (and so their orders and payment methods).
The ``ood`` split holds out two families and the phrasing set ``B`` entirely. Every task's
gold actions are replayed once at generation; a task whose gold fails is never emitted.
"""

from __future__ import annotations

import functools
import random

from trajgym.envs.goals import requests_in_prose
from trajgym.envs.retail.state import RetailState
from trajgym.envs.retail.tools import RETAIL_TOOLKIT
from trajgym.envs.retail.world import Customer, Order, World, make_world, random_address
from trajgym.envs.task_spec import Draw, Family, Identity, TaskSpec, phrasings_of
from trajgym.envs.task_spec import make_tasks as draw_tasks
from trajgym.records.schema import Action, Intent, Split, Task

ENV_ID = "trajgym/Retail-v1"
_REASONS = ("no longer needed", "ordered by mistake")
_OUT_OF_SCOPE = (
    "change the email address on my account",
    "get a price match on something I bought last week",
    "report a package that says delivered but never arrived",
    "apply a coupon code to an order I already placed",
    "close my account for good",
)


class _Draw(Draw[World, Customer]):
    """A draw over one customer (the kit's :class:`~trajgym.envs.task_spec.Draw`)."""

    @property
    def customer(self) -> Customer:
        return self.entity

    def orders(self, *statuses: str) -> list[Order]:
        found = (self.world.orders[o] for o in self.customer.orders)
        return [o for o in found if not statuses or o.status in statuses]


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
    actions = [_act("get_order_details", order_id=o.order_id)]
    return d.intent("policy_refusal", slots, actions, (o.status,), kind=kind)


def transfer_to_human(d: _Draw) -> Intent | None:
    """The user wants something out of scope: authenticate, then transfer."""
    wish = d.rng.choice(_OUT_OF_SCOPE)
    return d.intent(
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


_SINGLE: dict[str, Family[_Draw]] = {
    "order_status": Family(order_status, 1),
    "transfer_to_human": Family(transfer_to_human, 1),
    "policy_refusal": Family(policy_refusal, 2),
    "cancel_pending_order": Family(cancel_pending_order, 2),
    "update_default_address": Family(update_default_address, 2),
    "modify_order_address": Family(modify_order_address, 3),
    "return_items": Family(return_items, 3),
    "exchange_items": Family(exchange_items, 4),
    "modify_order_items": Family(modify_order_items, 4),
    "modify_order_payment": Family(modify_order_payment, 3),
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


def _draw(world: World, user_id: str, rng: random.Random, phrasing: str) -> _Draw:
    return _Draw(world, world.customers[user_id], rng, phrasing, phrasings_of(__package__))


def _identify(d: _Draw) -> Identity | None:
    """By email if the customer remembers it (70%), else by name and zip (if unique)."""
    c = d.customer
    identity = {"first_name": c.first_name, "last_name": c.last_name, "zip": c.address.zip}
    if d.rng.random() < 0.7 and d.world.user_by_email[c.email] == c.user_id:
        identity["email"] = c.email
        return identity, (_act("find_user_id_by_email", email=c.email),)
    if d.world.user_by_name_zip[(c.first_name.lower(), c.last_name.lower(), c.address.zip)] != (
        c.user_id
    ):
        return None
    auth = _act(
        "find_user_id_by_name_zip",
        first_name=c.first_name,
        last_name=c.last_name,
        zip=c.address.zip,
    )
    return identity, (auth,)


def _instruction(d: _Draw, identity: dict[str, str], intents: list[Intent]) -> str:
    """The hidden goal in prose, for an LLM playing the user."""
    c = d.customer
    known = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in identity.items())
    lines = [
        f"You are {c.first_name} {c.last_name}, a customer of an online store. You know: "
        f"{known}. Give these only when asked."
    ]
    if "email" not in identity:
        lines.append("You do not remember your email address.")
    return " ".join(lines + requests_in_prose(intents))


RETAIL_SPEC: TaskSpec[World, _Draw] = TaskSpec(
    env_id=ENV_ID,
    package=__package__,
    families=_SINGLE,
    in_distribution=FAMILIES[: -len(OOD_FAMILIES)],
    held_out=OOD_FAMILIES,
    entities=lambda world, split: sorted(u for u, c in world.customers.items() if c.split == split),
    draw=_draw,
    identify=_identify,
    instruction=_instruction,
    toolkit=RETAIL_TOOLKIT,
    gold_state=RetailState,
    chains={"multi_intent": (2, 5), "multi_intent_3": (3, 6)},
    combinable=_COMBINABLE,
    chain_slot="order_id",
)


@functools.cache
def make_tasks(
    split: Split, world_seed: int = 0, spec: TaskSpec[World, _Draw] = RETAIL_SPEC
) -> tuple[Task, ...]:
    """All tasks of a split, deterministic for the world (ids are stable within a version)."""
    world = make_world(world_seed)
    return draw_tasks(spec, world, world.seed, split)
