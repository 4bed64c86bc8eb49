"""The Airline tools. Each receives the episode's :class:`AirlineState` explicitly.

Write tools check what a reservations back office would (ownership by the authenticated
user, departures, seats, balances, basic economy fares) and raise :class:`ToolError` with a
message the agent can act on. Whether the policy allows a cancellation, and how many bags
are free, is left to the agent, as at a real desk.
"""

from __future__ import annotations

import ast
import datetime as dt
import operator
from collections.abc import Callable
from typing import Literal

from trajgym.envs.airline.records import Cabin, FlightRef, Passenger, Reservation
from trajgym.envs.airline.rules import BAG_FEE, BOOKABLE, INSURANCE_FEE, NOW, is_certificate
from trajgym.envs.airline.state import AirlineState
from trajgym.envs.desk import transfer_to_human_agents
from trajgym.tools import ToolError, Toolkit, tool

CancelReason = Literal["change of plan", "airline cancelled flight", "health", "weather", "other"]


# Look-ups --------------------------------------------------------------------------------


@tool
def get_user_details(state: AirlineState, user_id: str) -> dict[str, object]:
    """Get a user's profile: name, date of birth, membership, payment methods, reservations.

    Looking the user up by the id they give authenticates them.

    Args:
        user_id: The user's id, e.g. 'mia_kaur_123'.
    """
    user = state.user(user_id)
    state.authenticated = user.user_id
    return user.model_dump(mode="json", exclude={"split"})


@tool
def get_reservation_details(state: AirlineState, reservation_id: str) -> dict[str, object]:
    """Get a reservation's flights, cabin, passengers, bags, insurance, payments and status.

    Args:
        reservation_id: The six-character reservation id, e.g. 'ZFA04Y'.
    """
    return state.reservation(reservation_id).model_dump(mode="json")


@tool
def list_airports(state: AirlineState) -> dict[str, str]:
    """List the airports the airline serves: three-letter code -> city."""
    return dict(state.world.airports)


@tool
def search_direct_flights(
    state: AirlineState, origin: str, destination: str, date: str
) -> list[dict[str, object]]:
    """Search the direct flights on a date that can still be booked, with seats and fares.

    Args:
        origin: Three-letter airport code of departure, e.g. 'JFK'.
        destination: Three-letter airport code of arrival, e.g. 'SFO'.
        date: The date of travel, 'YYYY-MM-DD'.
    """
    for code in (origin, destination):
        if code not in state.world.airports:
            raise ToolError(f"Unknown airport '{code}': use a three-letter code (list_airports).")
    _check_date(date)
    found = []
    for number in state.world.routes.get((origin, destination), ()):
        flight = state.flight(number, date)
        if flight.status == BOOKABLE:
            found.append(flight.model_dump(mode="json", exclude={"status"}))
    return found


@tool
def get_flight_status(state: AirlineState, flight_number: str, date: str) -> dict[str, object]:
    """Get a flight's status on a date, with its times, seats left and fares per cabin.

    Args:
        flight_number: The flight number, e.g. 'HAT123'.
        date: The date of the flight, 'YYYY-MM-DD'.
    """
    _check_date(date)
    return state.flight(flight_number, date).model_dump(mode="json")


_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


@tool
def calculate(state: AirlineState, expression: str) -> str:
    """Evaluate an arithmetic expression with numbers, + - * / and parentheses.

    Args:
        expression: The expression, e.g. '2 * (120 + 35) - 50'.
    """
    try:
        value = _evaluate(ast.parse(expression, mode="eval").body)
    except (SyntaxError, ZeroDivisionError, TypeError) as e:
        raise ToolError(f"Cannot evaluate '{expression}': {e}.") from e
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _BINARY[type(node.op)](_evaluate(node.left), _evaluate(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    raise TypeError("only numbers, + - * / and parentheses are allowed")


# Writes ----------------------------------------------------------------------------------


@tool(writes=True)
def book_reservation(
    state: AirlineState,
    user_id: str,
    flights: list[FlightRef],
    cabin: Cabin,
    passengers: list[Passenger],
    payment_id: str,
    total_baggages: int,
    nonfree_baggages: int,
    insurance: bool,
) -> dict[str, object]:
    """Book a one-way (one flight) or round trip (out and back) on direct flights.

    The total (fares for every passenger, insurance, bags beyond the free allowance) is
    charged to one payment method; a travel certificate must cover all of it.

    Args:
        user_id: The authenticated user's id.
        flights: The flight out and, for a round trip, the flight back.
        cabin: 'basic_economy', 'economy' or 'business', the same on every flight.
        passengers: Each traveller's first name, last name and date of birth ('YYYY-MM-DD').
        payment_id: The payment method's id, e.g. 'credit_card_1234567'.
        total_baggages: Checked bags for the whole reservation.
        nonfree_baggages: How many of them are beyond the free allowance ($50 each).
        insurance: Whether to buy travel insurance ($30 per passenger).
    """
    user = state.me()
    if user.user_id != user_id:
        raise ToolError(f"User '{user_id}' is not the authenticated user.")
    if not 1 <= len(passengers) <= 5:
        raise ToolError("A reservation has between 1 and 5 passengers.")
    if not 0 <= nonfree_baggages <= total_baggages:
        raise ToolError("nonfree_baggages must be between 0 and total_baggages.")
    legs = state.legs(flights, cabin)
    people = len(passengers)
    total = sum(f.price for f in legs) * people + BAG_FEE * nonfree_baggages
    total += INSURANCE_FEE * people if insurance else 0
    user, payment = state.pay(user, payment_id, total, certificate_ok=True)
    reservation = Reservation(
        reservation_id=state.new_reservation_id(user_id, flights),
        user_id=user_id,
        origin=legs[0].origin,
        destination=legs[0].destination,
        flight_type="round_trip" if len(legs) == 2 else "one_way",
        cabin=cabin,
        flights=legs,
        passengers=tuple(passengers),
        payment_history=(payment,),
        created_at=NOW,
        total_baggages=total_baggages,
        nonfree_baggages=nonfree_baggages,
        insurance="yes" if insurance else "no",
        status="active",
    )
    state.move_seats(reservation, cabin, -people)
    state.save_user(
        user.model_copy(update={"reservations": (*user.reservations, reservation.reservation_id)})
    )
    return state.save(reservation)


@tool(writes=True)
def cancel_reservation(
    state: AirlineState, reservation_id: str, reason: CancelReason
) -> dict[str, object]:
    """Cancel a whole reservation; payments are refunded except travel certificates.

    Args:
        reservation_id: The reservation id, e.g. 'ZFA04Y'.
        reason: 'change of plan', 'airline cancelled flight', 'health', 'weather' or 'other'.
    """
    reservation = state.owned(reservation_id)
    state.require_not_departed(reservation, or_cancelled=False)
    user = state.me()
    net: dict[str, int] = {}
    for p in reservation.payment_history:
        if not is_certificate(p.payment_id):
            net[p.payment_id] = net.get(p.payment_id, 0) + p.amount
    refunds = []
    for payment_id, amount in net.items():
        if amount:
            user, refund = state.pay(user, payment_id, -amount)
            refunds.append(refund)
    state.save_user(user)
    state.move_seats(reservation, reservation.cabin, len(reservation.passengers))
    return state.save(
        reservation.model_copy(
            update={
                "status": "cancelled",
                "cancel_reason": reason,
                "payment_history": reservation.payment_history + tuple(refunds),
            }
        )
    )


@tool(writes=True)
def update_reservation_cabin(
    state: AirlineState, reservation_id: str, cabin: Cabin, payment_id: str
) -> dict[str, object]:
    """Move every flight of a reservation to another cabin at today's fares.

    The difference (new fare minus fare paid, per flight and passenger) is charged to, or
    refunded to, a credit card or gift card on file.

    Args:
        reservation_id: The reservation id, e.g. 'ZFA04Y'.
        cabin: The new cabin: 'economy' or 'business'.
        payment_id: The credit card or gift card that pays or receives the difference.
    """
    reservation = state.owned(reservation_id)
    if reservation.cabin == "basic_economy":
        raise ToolError(
            f"Reservation {reservation.reservation_id} is basic economy; the cabin of a "
            "basic economy reservation cannot be changed."
        )
    if cabin == "basic_economy":
        raise ToolError("A reservation cannot be moved to basic economy.")
    if cabin == reservation.cabin:
        raise ToolError(f"Reservation {reservation.reservation_id} is already in {cabin}.")
    state.require_not_departed(reservation, or_cancelled=True)
    people = len(reservation.passengers)
    flights = tuple(
        f.model_copy(update={"price": state.flight(f.flight_number, f.date).prices[cabin]})
        for f in reservation.flights
    )
    diff = (
        sum(new.price - old.price for new, old in zip(flights, reservation.flights, strict=True))
        * people
    )
    user, payment = state.pay(state.me(), payment_id, diff)
    state.move_seats(reservation, cabin, -people)
    state.move_seats(reservation, reservation.cabin, people)
    state.save_user(user)
    payments = reservation.payment_history + ((payment,) if diff else ())
    return state.save(
        reservation.model_copy(
            update={"cabin": cabin, "flights": flights, "payment_history": payments}
        )
    )


@tool(writes=True)
def update_reservation_baggages(
    state: AirlineState,
    reservation_id: str,
    total_baggages: int,
    nonfree_baggages: int,
    payment_id: str,
) -> dict[str, object]:
    """Add checked bags to a reservation; each new bag beyond the free allowance costs $50.

    Args:
        reservation_id: The reservation id, e.g. 'ZFA04Y'.
        total_baggages: The new total of checked bags (bags cannot be removed).
        nonfree_baggages: How many of the total are beyond the free allowance.
        payment_id: The credit card or gift card that pays for the new non-free bags.
    """
    reservation = state.owned(reservation_id)
    state.require_not_departed(reservation, or_cancelled=True)
    if total_baggages <= reservation.total_baggages:
        raise ToolError(
            f"Reservation {reservation.reservation_id} already has "
            f"{reservation.total_baggages} bags; bags can be added, not removed."
        )
    if not reservation.nonfree_baggages <= nonfree_baggages <= total_baggages:
        raise ToolError(
            f"nonfree_baggages must be between {reservation.nonfree_baggages} (now) "
            "and total_baggages."
        )
    fee = BAG_FEE * (nonfree_baggages - reservation.nonfree_baggages)
    payments = reservation.payment_history
    if fee:
        user, payment = state.pay(state.me(), payment_id, fee)
        state.save_user(user)
        payments += (payment,)
    elif state.me().method(payment_id) is None:
        raise ToolError(f"Payment method '{payment_id}' is not on file for this user.")
    return state.save(
        reservation.model_copy(
            update={
                "total_baggages": total_baggages,
                "nonfree_baggages": nonfree_baggages,
                "payment_history": payments,
            }
        )
    )


AIRLINE_TOOLKIT: Toolkit[AirlineState] = Toolkit(
    [
        get_user_details,
        get_reservation_details,
        list_airports,
        search_direct_flights,
        get_flight_status,
        calculate,
        book_reservation,
        cancel_reservation,
        update_reservation_cabin,
        update_reservation_baggages,
        transfer_to_human_agents,
    ]
)


# Shared checks ---------------------------------------------------------------------------


def _check_date(date: str) -> None:
    try:
        dt.date.fromisoformat(date)
    except ValueError as e:
        raise ToolError(f"Date '{date}' is not in the form YYYY-MM-DD.") from e
