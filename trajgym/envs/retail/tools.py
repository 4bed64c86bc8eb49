"""The Retail tools. Each receives the episode's :class:`RetailState` explicitly.

Write tools check the preconditions a real back office would (order status, ownership by
the authenticated user, item availability, payment methods on file) and raise
:class:`ToolError` with a message the agent can act on.
"""

from __future__ import annotations

from typing import Literal

from trajgym.envs.desk import transfer_to_human_agents
from trajgym.envs.retail.state import RetailState
from trajgym.envs.retail.world import (
    Address,
    Order,
    OrderItem,
    Payment,
    PaymentMethod,
    Product,
)
from trajgym.tools import ToolError, Toolkit, tool

# Look-ups --------------------------------------------------------------------------------


@tool
def find_user_id_by_email(state: RetailState, email: str) -> str:
    """Find a user's id by their email address; this authenticates the user.

    Args:
        email: The user's email, e.g. 'jane.doe12@example.com'.
    """
    user_id = state.world.user_by_email.get(email.strip().lower())
    if user_id is None:
        raise ToolError(f"No user with email '{email}'.")
    state.authenticated = user_id
    return user_id


@tool
def find_user_id_by_name_zip(state: RetailState, first_name: str, last_name: str, zip: str) -> str:
    """Find a user's id by first name, last name and zip code; this authenticates the user.

    Args:
        first_name: The user's first name, e.g. 'Jane'.
        last_name: The user's last name, e.g. 'Doe'.
        zip: The zip code of the user's address, e.g. '62701'.
    """
    key = (first_name.strip().lower(), last_name.strip().lower(), zip.strip())
    user_id = state.world.user_by_name_zip.get(key)
    if user_id is None:
        raise ToolError("No user with that name and zip code.")
    state.authenticated = user_id
    return user_id


@tool
def get_user_details(state: RetailState, user_id: str) -> dict[str, object]:
    """Get a user's profile: name, email, address, payment methods and order ids.

    Args:
        user_id: The user's id, e.g. 'jane_doe_1234'.
    """
    return state.customer(user_id).model_dump(mode="json", exclude={"split"})


@tool
def get_order_details(state: RetailState, order_id: str) -> dict[str, object]:
    """Get an order's status, items, address, payments and tracking.

    Args:
        order_id: The order id, e.g. '#W1234567'.
    """
    return state.order(order_id).model_dump(mode="json")


@tool
def get_product_details(state: RetailState, product_id: str) -> dict[str, object]:
    """Get a product's variants (item ids, options, prices, availability).

    Args:
        product_id: The product id, e.g. '6086499569'.
    """
    product = state.world.products.get(product_id)
    if product is None:
        raise ToolError(f"Product '{product_id}' not found.")
    return product.model_dump(mode="json")


@tool
def list_product_types(state: RetailState) -> dict[str, str]:
    """List every product type in the store with its product id."""
    return {p.name: p.product_id for p in state.world.products.values()}


# Writes ----------------------------------------------------------------------------------


@tool(writes=True)
def cancel_pending_order(
    state: RetailState, order_id: str, reason: Literal["no longer needed", "ordered by mistake"]
) -> dict[str, object]:
    """Cancel a pending order; the full amount is refunded to the original payment methods.

    Args:
        order_id: The order id, e.g. '#W1234567'.
        reason: Why the user cancels: 'no longer needed' or 'ordered by mistake'.
    """
    order = state.owned_order(order_id)
    _require_pending(order)
    refunds = tuple(
        Payment(kind="refund", amount=p.amount, payment_method_id=p.payment_method_id)
        for p in order.payments
        if p.kind == "payment"
    )
    return state.save(
        order.model_copy(
            update={
                "status": "cancelled",
                "cancel_reason": reason,
                "payments": order.payments + refunds,
            }
        )
    )


@tool(writes=True)
def modify_pending_order_address(
    state: RetailState,
    order_id: str,
    address1: str,
    address2: str,
    city: str,
    state_code: str,
    country: str,
    zip: str,
) -> dict[str, object]:
    """Change the shipping address of a pending order.

    Args:
        order_id: The order id, e.g. '#W1234567'.
        address1: Street line, e.g. '12 Oak Street'.
        address2: Second line (apartment, suite), or '' if none.
        city: City.
        state_code: Two-letter state code, e.g. 'IL'.
        country: Country, e.g. 'USA'.
        zip: Zip code.
    """
    order = state.owned_order(order_id)
    _require_pending(order)
    address = _address(address1, address2, city, state_code, country, zip)
    return state.save(order.model_copy(update={"address": address}))


@tool(writes=True)
def modify_pending_order_payment(
    state: RetailState, order_id: str, payment_method_id: str
) -> dict[str, object]:
    """Pay a pending order with another payment method on file (the old one is refunded).

    Args:
        order_id: The order id, e.g. '#W1234567'.
        payment_method_id: A payment method of the user, e.g. 'gift_card_1234567'.
    """
    order = state.owned_order(order_id)
    _require_pending(order)
    paid = [p for p in order.payments if p.kind == "payment"]
    if len(paid) != 1:
        raise ToolError("Only an order paid with a single payment can change payment method.")
    if paid[0].payment_method_id == payment_method_id:
        raise ToolError("The new payment method must differ from the current one.")
    method = _payment_method(state, order.user_id, payment_method_id)
    _require_balance(method, order.total)
    payments = order.payments + (
        Payment(kind="payment", amount=order.total, payment_method_id=payment_method_id),
        Payment(kind="refund", amount=order.total, payment_method_id=paid[0].payment_method_id),
    )
    return state.save(order.model_copy(update={"payments": payments}))


@tool(writes=True)
def modify_pending_order_items(
    state: RetailState,
    order_id: str,
    item_ids: list[str],
    new_item_ids: list[str],
    payment_method_id: str,
) -> dict[str, object]:
    """Swap items of a pending order for other variants of the same products (once per order).

    Args:
        order_id: The order id, e.g. '#W1234567'.
        item_ids: Item ids in the order to replace.
        new_item_ids: New item ids, one per replaced item, same product, in the same order.
        payment_method_id: Payment method that pays or receives the price difference.
    """
    order = state.owned_order(order_id)
    if order.status != "pending":
        raise ToolError(
            f"Order {order.order_id} is '{order.status}'; only pending orders can be modified."
        )
    items, diff, method = _paid_swap(state, order, item_ids, new_item_ids, payment_method_id)
    payments = order.payments
    if diff:
        kind: Literal["payment", "refund"] = "payment" if diff > 0 else "refund"
        payments += (Payment(kind=kind, amount=abs(diff), payment_method_id=method.id),)
    return state.save(
        order.model_copy(
            update={"items": items, "payments": payments, "status": "pending (item modified)"}
        )
    )


@tool(writes=True)
def modify_user_address(
    state: RetailState,
    user_id: str,
    address1: str,
    address2: str,
    city: str,
    state_code: str,
    country: str,
    zip: str,
) -> dict[str, object]:
    """Change a user's default address (existing orders keep theirs).

    Args:
        user_id: The user's id, e.g. 'jane_doe_1234'.
        address1: Street line, e.g. '12 Oak Street'.
        address2: Second line (apartment, suite), or '' if none.
        city: City.
        state_code: Two-letter state code, e.g. 'IL'.
        country: Country, e.g. 'USA'.
        zip: Zip code.
    """
    customer = state.customer(user_id)
    if state.authenticated != user_id:
        raise ToolError(f"User '{user_id}' is not the authenticated user.")
    address = _address(address1, address2, city, state_code, country, zip)
    updated = customer.model_copy(update={"address": address})
    state.store.tables["customers"].put(user_id, updated)
    return updated.model_dump(mode="json", exclude={"split"})


@tool(writes=True)
def return_delivered_order_items(
    state: RetailState, order_id: str, item_ids: list[str], payment_method_id: str
) -> dict[str, object]:
    """Request a return of items of a delivered order; the refund goes to the payment method.

    Args:
        order_id: The order id, e.g. '#W1234567'.
        item_ids: Item ids in the order to return.
        payment_method_id: The original payment method or a gift card of the user.
    """
    order = state.owned_order(order_id)
    _require_delivered(order)
    _items_in_order(order, item_ids)
    method = _payment_method(state, order.user_id, payment_method_id)
    original = {p.payment_method_id for p in order.payments if p.kind == "payment"}
    if method.id not in original and method.source != "gift_card":
        raise ToolError("Refunds go to the original payment method or a gift card.")
    return state.save(
        order.model_copy(
            update={"status": "return requested", "return_items": tuple(sorted(item_ids))}
        )
    )


@tool(writes=True)
def exchange_delivered_order_items(
    state: RetailState,
    order_id: str,
    item_ids: list[str],
    new_item_ids: list[str],
    payment_method_id: str,
) -> dict[str, object]:
    """Request an exchange of items of a delivered order for other variants of the same products.

    Args:
        order_id: The order id, e.g. '#W1234567'.
        item_ids: Item ids in the order to exchange.
        new_item_ids: New item ids, one per exchanged item, same product, in the same order.
        payment_method_id: Payment method that pays or receives the price difference.
    """
    order = state.owned_order(order_id)
    _require_delivered(order)
    _paid_swap(state, order, item_ids, new_item_ids, payment_method_id)  # checks only
    return state.save(
        order.model_copy(
            update={
                "status": "exchange requested",
                "exchange_items": tuple(sorted(item_ids)),
                "exchange_new_items": tuple(sorted(new_item_ids)),
            }
        )
    )


RETAIL_TOOLKIT: Toolkit[RetailState] = Toolkit(
    [
        find_user_id_by_email,
        find_user_id_by_name_zip,
        get_user_details,
        get_order_details,
        get_product_details,
        list_product_types,
        cancel_pending_order,
        modify_pending_order_address,
        modify_pending_order_payment,
        modify_pending_order_items,
        modify_user_address,
        return_delivered_order_items,
        exchange_delivered_order_items,
        transfer_to_human_agents,
    ]
)


# Shared checks ---------------------------------------------------------------------------


def _require_pending(order: Order) -> None:
    if order.status not in ("pending", "pending (item modified)"):
        raise ToolError(f"Order {order.order_id} is '{order.status}'; only pending orders qualify.")


def _require_delivered(order: Order) -> None:
    if order.status != "delivered":
        raise ToolError(
            f"Order {order.order_id} is '{order.status}'; only delivered orders qualify."
        )


def _address(a1: str, a2: str, city: str, state: str, country: str, zip: str) -> Address:
    return Address(address1=a1, address2=a2, city=city, state=state, country=country, zip=zip)


def _payment_method(state: RetailState, user_id: str, method_id: str) -> PaymentMethod:
    for method in state.customer(user_id).payment_methods:
        if method.id == method_id:
            return method
    raise ToolError(f"Payment method '{method_id}' is not on file for this user.")


def _require_balance(method: PaymentMethod, amount: float) -> None:
    if method.source == "gift_card" and amount > 0 and (method.balance or 0.0) < amount:
        raise ToolError(f"Gift card balance {method.balance:.2f} is less than {amount:.2f}.")


def _items_in_order(order: Order, item_ids: list[str]) -> list[OrderItem]:
    by_id = {i.item_id: i for i in order.items}
    if not item_ids:
        raise ToolError("item_ids must not be empty.")
    if len(set(item_ids)) != len(item_ids):
        raise ToolError("item_ids contains duplicates.")
    missing = [i for i in item_ids if i not in by_id]
    if missing:
        raise ToolError(f"Items {missing} are not in order {order.order_id}.")
    return [by_id[i] for i in item_ids]


def _paid_swap(
    state: RetailState, order: Order, item_ids: list[str], new_item_ids: list[str], method_id: str
) -> tuple[tuple[OrderItem, ...], float, PaymentMethod]:
    """The swapped items, the price difference and the method that covers it (checked)."""
    items, diff = _swap_items(state, order, item_ids, new_item_ids)
    method = _payment_method(state, order.user_id, method_id)
    _require_balance(method, diff)
    return items, diff, method


def _swap_items(
    state: RetailState, order: Order, item_ids: list[str], new_item_ids: list[str]
) -> tuple[tuple[OrderItem, ...], float]:
    """Validate a like-for-like swap; return the new item list and the price difference."""
    old = _items_in_order(order, item_ids)
    if len(new_item_ids) != len(item_ids):
        raise ToolError("new_item_ids must have one entry per item in item_ids.")
    replacement: dict[str, OrderItem] = {}
    for item, new_id in zip(old, new_item_ids, strict=True):
        product: Product = state.world.products[item.product_id]
        variant = product.variants.get(new_id)
        if variant is None:
            raise ToolError(f"Item {new_id} is not a variant of {product.name}.")
        if new_id == item.item_id:
            raise ToolError(f"Item {new_id} is the same as the one in the order.")
        if not variant.available:
            raise ToolError(f"Item {new_id} is out of stock.")
        replacement[item.item_id] = OrderItem(
            item_id=new_id,
            product_id=product.product_id,
            name=product.name,
            options=variant.options,
            price=variant.price,
        )
    items = tuple(replacement.get(i.item_id, i) for i in order.items)
    diff = round(sum(i.price for i in items) - order.total, 2)
    return items, diff
