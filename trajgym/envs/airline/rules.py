"""The airline's policy as code: the same rules ``policy.md`` states in words.

The tools enforce only what a back office would (seats, balances, basic economy changes);
whether a cancellation is allowed is the agent's judgement, so task generation uses these
functions to build the gold and the refusals.
"""

from __future__ import annotations

from trajgym.envs.airline.records import Cabin, Reservation, Tier

NOW = "2024-05-15T15:00:00"  # the desk's clock; policy.md states it too
TODAY = NOW[:10]
RECENT = "2024-05-14T15:00:00"  # 24 hours before NOW: later bookings may always be cancelled
BAG_FEE = 50
INSURANCE_FEE = 30
FREE_BAGS: dict[str, dict[str, int]] = {
    "regular": {"basic_economy": 0, "economy": 1, "business": 2},
    "silver": {"basic_economy": 1, "economy": 2, "business": 3},
    "gold": {"basic_economy": 2, "economy": 3, "business": 4},
}
CANCEL_REASONS = ("change of plan", "airline cancelled flight", "health", "weather", "other")
INSURED_REASONS = ("health", "weather")
DEPARTED = ("flying", "landed")
BOOKABLE = "scheduled"  # the only status a new booking may use


def nonfree_bags(tier: Tier, cabin: Cabin, passengers: int, total: int) -> int:
    """How many of ``total`` checked bags are beyond the free allowance."""
    return max(0, total - FREE_BAGS[tier][cabin] * passengers)


def cancel_allowed(
    reservation: Reservation, tier: Tier, reason: str, airline_cancelled: bool
) -> bool:
    """Whether the policy allows cancelling ``reservation`` for ``reason``.

    Args:
        reservation: The reservation (active, no flight departed).
        tier: The membership tier of the user who holds it.
        reason: The user's reason, one of ``CANCEL_REASONS``.
        airline_cancelled: Whether the airline cancelled one of its flights.
    """
    return (
        reservation.created_at >= RECENT
        or airline_cancelled
        or reservation.cabin == "business"
        or (tier == "gold" and reservation.cabin == "economy")
        or (reservation.insurance == "yes" and reason in INSURED_REASONS)
    )


def refund_amount(reservation: Reservation) -> int:
    """What a cancellation refunds: everything paid except with travel certificates."""
    return sum(p.amount for p in reservation.payment_history if not is_certificate(p.payment_id))


def is_certificate(payment_id: str) -> bool:
    """Whether a payment method id names a travel certificate."""
    return payment_id.startswith("certificate_")
