"""Retail tools on a small world: reads, writes, and the checks a back office makes."""

from __future__ import annotations

import pytest

from trajgym.envs.retail import tools as t
from trajgym.envs.retail.tools import RetailState
from trajgym.envs.retail.world import Order, World
from trajgym.tools import ToolError


def order_with(world: World, status: str) -> Order:
    found = [o for o in world.orders.values() if o.status == status]
    if not found:
        pytest.skip(f"no {status} order in the small world")
    return found[0]


def login(state: RetailState, user_id: str) -> None:
    email = state.world.customers[user_id].email
    assert t.find_user_id_by_email(state, email=email) == user_id


def test_lookups_authenticate(small_state: RetailState) -> None:
    customer = next(iter(small_state.world.customers.values()))
    assert small_state.authenticated is None
    assert t.find_user_id_by_email(small_state, email=customer.email.upper()) == customer.user_id
    assert small_state.authenticated == customer.user_id
    with pytest.raises(ToolError, match="No user"):
        t.find_user_id_by_email(small_state, email="nobody@example.com")
    details = t.get_user_details(small_state, user_id=customer.user_id)
    assert details["email"] == customer.email and "split" not in details


def test_writes_need_the_owner_authenticated(small_state: RetailState) -> None:
    order = order_with(small_state.world, "pending")
    with pytest.raises(ToolError, match="Authenticate"):
        t.cancel_pending_order(small_state, order_id=order.order_id, reason="no longer needed")
    other = next(u for u in small_state.world.customers if u != order.user_id)
    login(small_state, other)
    with pytest.raises(ToolError, match="does not belong"):
        t.cancel_pending_order(small_state, order_id=order.order_id, reason="no longer needed")


def test_cancel_refunds_and_changes_the_digest(small_state: RetailState) -> None:
    order = order_with(small_state.world, "pending")
    login(small_state, order.user_id)
    before = small_state.digest()
    result = t.cancel_pending_order(
        small_state, order_id=order.order_id, reason="ordered by mistake"
    )
    assert result["status"] == "cancelled"
    refunds = [p for p in result["payments"] if p["kind"] == "refund"]
    assert sum(p["amount"] for p in refunds) == pytest.approx(order.total)
    assert small_state.digest() != before
    with pytest.raises(ToolError, match="only pending"):
        t.cancel_pending_order(small_state, order_id=order.order_id, reason="ordered by mistake")
    # The shared world is untouched: another episode still sees the order pending.
    assert RetailState(small_state.world).order(order.order_id).status == "pending"


def test_return_only_delivered_and_to_allowed_methods(small_state: RetailState) -> None:
    delivered = order_with(small_state.world, "delivered")
    login(small_state, delivered.user_id)
    paid = delivered.payments[0].payment_method_id
    item = delivered.items[0].item_id
    with pytest.raises(ToolError, match="not in order"):
        t.return_delivered_order_items(
            small_state, order_id=delivered.order_id, item_ids=["123"], payment_method_id=paid
        )
    out = t.return_delivered_order_items(
        small_state, order_id=delivered.order_id, item_ids=[item], payment_method_id=paid
    )
    assert out["status"] == "return requested" and out["return_items"] == [item]


def test_exchange_checks_product_and_stock(small_state: RetailState) -> None:
    delivered = order_with(small_state.world, "delivered")
    login(small_state, delivered.user_id)
    item = delivered.items[0]
    product = small_state.world.products[item.product_id]
    foreign = next(
        v
        for p in small_state.world.products.values()
        if p.product_id != product.product_id
        for v in p.variants.values()
    )
    paid = delivered.payments[0].payment_method_id
    with pytest.raises(ToolError, match="is not a variant"):
        t.exchange_delivered_order_items(
            small_state,
            order_id=delivered.order_id,
            item_ids=[item.item_id],
            new_item_ids=[foreign.item_id],
            payment_method_id=paid,
        )
    sold_out = [
        v for v in product.variants.values() if not v.available and v.item_id != item.item_id
    ]
    assert sold_out, "the catalog marks about a fifth of the variants unavailable"
    with pytest.raises(ToolError, match="out of stock"):
        t.exchange_delivered_order_items(
            small_state,
            order_id=delivered.order_id,
            item_ids=[item.item_id],
            new_item_ids=[sold_out[0].item_id],
            payment_method_id=paid,
        )


def test_digest_ignores_writes_that_restore_the_original(small_state: RetailState) -> None:
    customer = next(iter(small_state.world.customers.values()))
    login(small_state, customer.user_id)
    clean = RetailState(small_state.world).digest()
    a = customer.address
    t.modify_user_address(
        small_state,
        user_id=customer.user_id,
        address1="1 New Road",
        address2="",
        city=a.city,
        state_code=a.state,
        country=a.country,
        zip=a.zip,
    )
    assert small_state.digest() != clean
    t.modify_user_address(
        small_state,
        user_id=customer.user_id,
        address1=a.address1,
        address2=a.address2,
        city=a.city,
        state_code=a.state,
        country=a.country,
        zip=a.zip,
    )
    assert small_state.digest() == clean


def test_transfer_records_who_was_transferred(small_state: RetailState) -> None:
    assert t.transfer_to_human_agents(small_state, summary="help") == "Transfer successful."
    anonymous = small_state.digest()
    other = RetailState(small_state.world)
    login(other, next(iter(other.world.customers)))
    t.transfer_to_human_agents(other, summary="something else entirely")
    assert other.digest() != anonymous
