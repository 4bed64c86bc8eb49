"""One Retail episode's state: copy-on-write tables over the shared world, plus the session."""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from trajgym.envs.base import overlay_changes
from trajgym.envs.retail.world import Customer, Order, Record, World
from trajgym.envs.store import Store
from trajgym.records.schema import StateChange
from trajgym.tools import ToolError


class Transfer(Record):
    """A hand-over to a human agent (the summary is free text and not part of the state)."""

    user_id: str | None


class RetailState:
    """One episode's view of the world: copy-on-write tables plus the session."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.bases: dict[str, Mapping[str, BaseModel]] = {
            "customers": world.customers,
            "orders": world.orders,
            "transfers": {},
        }
        self.store = Store(self.bases)
        self.authenticated: str | None = None
        self.transfer_summary: str | None = None

    def customer(self, user_id: str) -> Customer:
        """The customer with ``user_id``, or a tool error."""
        found = self.store.tables["customers"].get(user_id)
        if not isinstance(found, Customer):
            raise ToolError(f"User '{user_id}' not found.")
        return found

    def order(self, order_id: str) -> Order:
        """The order with ``order_id`` (with or without the leading '#'), or a tool error."""
        key = order_id if order_id.startswith("#") else f"#{order_id}"
        found = self.store.tables["orders"].get(key)
        if not isinstance(found, Order):
            raise ToolError(f"Order '{order_id}' not found.")
        return found

    def owned_order(self, order_id: str) -> Order:
        """An order that belongs to the authenticated user: the policy's guard on writes."""
        order = self.order(order_id)
        if self.authenticated is None:
            raise ToolError("Authenticate the user (by email, or name and zip) before any change.")
        if order.user_id != self.authenticated:
            raise ToolError(f"Order {order.order_id} does not belong to the authenticated user.")
        return order

    def save(self, order: Order) -> dict[str, object]:
        """Store a changed order and return it as the tool result."""
        self.store.tables["orders"].put(order.order_id, order)
        return order.model_dump(mode="json")

    def digest(self) -> str:
        """Canonical hash of the episode's state."""
        return self.store.digest()

    def changes(self) -> list[StateChange]:
        """The records this episode changed (the overlay is exactly that)."""
        return overlay_changes(self.store, self.bases)
