"""One Retail episode's state: copy-on-write tables over the shared world, plus the session."""

from __future__ import annotations

from trajgym.envs.desk import DeskState
from trajgym.envs.retail.world import Customer, Order, World
from trajgym.tools import ToolError


class RetailState(DeskState):
    """One episode's view of the world: copy-on-write tables plus the session."""

    world: World

    def __init__(self, world: World) -> None:
        super().__init__(world, {"customers": world.customers, "orders": world.orders})

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
