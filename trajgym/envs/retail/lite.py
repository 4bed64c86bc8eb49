"""Retail-Lite (``trajgym/RetailLite-v0``): the Retail world cut to a CPU-sized student.

Same customers, orders and rules, but three task families (order status, cancellation,
transfer), five tools with short schemas, compact tool results and a short policy: one
conversation is ~700 tokens with the student's template instead of ~5,600. The tools
delegate to Retail's, so the state they change and its verification are Retail's own.
"""

from __future__ import annotations

import dataclasses
import functools
from importlib import resources
from typing import Any, ClassVar, Literal

from trajgym.envs.retail import RetailEnv
from trajgym.envs.retail import tools as retail
from trajgym.envs.retail.state import RetailState
from trajgym.envs.retail.tasks import RETAIL_SPEC, make_tasks
from trajgym.envs.retail.world import Order
from trajgym.tools import Toolkit, tool

ENV_ID = "trajgym/RetailLite-v0"
LITE_SPEC = dataclasses.replace(
    RETAIL_SPEC,
    env_id=ENV_ID,
    in_distribution=("order_status", "cancel_pending_order", "transfer_to_human"),
    held_out=("multi_intent",),  # status and cancellation chained, in held-out phrasings
    combinable=("order_status", "cancel_pending_order"),
)


def _summary(order: Order) -> dict[str, object]:
    return {
        "order_id": order.order_id,
        "status": order.status,
        "total": order.total,
        "items": [i.name for i in order.items],
    }


@tool
def get_order_details(state: RetailState, order_id: str) -> dict[str, object]:
    """Get an order's status, total and items."""
    return _summary(state.order(order_id))


@tool(writes=True)
def cancel_pending_order(
    state: RetailState, order_id: str, reason: Literal["no longer needed", "ordered by mistake"]
) -> dict[str, object]:
    """Cancel a pending order; its total is refunded."""
    retail.cancel_pending_order(state, order_id=order_id, reason=reason)
    return _summary(state.order(order_id))


@tool
def find_user_id_by_email(state: RetailState, email: str) -> str:
    """Find a user's id by email; this authenticates the user."""
    return str(retail.find_user_id_by_email(state, email=email))


@tool
def find_user_id_by_name_zip(state: RetailState, first_name: str, last_name: str, zip: str) -> str:
    """Find a user's id by first name, last name and zip code; this authenticates the user."""
    return str(
        retail.find_user_id_by_name_zip(state, first_name=first_name, last_name=last_name, zip=zip)
    )


@tool(ends_episode=True)
def transfer_to_human_agents(state: RetailState, summary: str) -> str:
    """Hand the conversation to a human agent, with a short summary of the issue."""
    return str(retail.transfer_to_human_agents(state, summary=summary))


LITE_TOOLKIT: Toolkit[RetailState] = Toolkit(
    [
        find_user_id_by_email,
        find_user_id_by_name_zip,
        get_order_details,
        cancel_pending_order,
        transfer_to_human_agents,
    ]
)


class RetailLiteEnv(RetailEnv):
    """Order status, cancellations and transfers at an online store's desk."""

    env_id: ClassVar[str] = ENV_ID
    version: ClassVar[int] = 0
    toolkit: ClassVar[Toolkit[Any]] = LITE_TOOLKIT
    system_prompt: ClassVar[str] = (
        resources.files(__package__).joinpath("policy_lite.md").read_text()
    )

    make_tasks = staticmethod(functools.partial(make_tasks, spec=LITE_SPEC))
