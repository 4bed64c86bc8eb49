"""One Airline episode's state: copy-on-write tables over the shared world, plus the session.

Resetting is O(1) (a new empty overlay) and the digest covers only what changed, so a step
costs tens of microseconds however large the world. The helpers here are the back office's
own checks (ownership, departures, seats, balances), shared by the write tools.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping

from pydantic import BaseModel

from trajgym.envs.airline.records import (
    Flight,
    FlightRef,
    Payment,
    Reservation,
    ReservedFlight,
    User,
    World,
    flight_key,
)
from trajgym.envs.airline.rules import BOOKABLE, DEPARTED
from trajgym.envs.desk import DeskState
from trajgym.tools import ToolError

_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class AirlineState(DeskState):
    """One episode's view of the world: copy-on-write tables plus the session."""

    world: World

    def __init__(self, world: World) -> None:
        tables: dict[str, Mapping[str, BaseModel]] = {
            "users": world.users,
            "reservations": world.reservations,
            "flights": world.flights,
        }
        super().__init__(world, tables)

    def user(self, user_id: str) -> User:
        """The user with ``user_id``, or a tool error."""
        found = self.store.tables["users"].get(user_id.strip())
        if not isinstance(found, User):
            raise ToolError(f"User '{user_id}' not found.")
        return found

    def reservation(self, reservation_id: str) -> Reservation:
        """The reservation with ``reservation_id``, or a tool error."""
        found = self.store.tables["reservations"].get(reservation_id.strip().upper())
        if not isinstance(found, Reservation):
            raise ToolError(f"Reservation '{reservation_id}' not found.")
        return found

    def flight(self, flight_number: str, date: str) -> Flight:
        """One day's operation of a flight, or a tool error."""
        found = self.store.tables["flights"].get(flight_key(flight_number.strip().upper(), date))
        if not isinstance(found, Flight):
            if not _ISO_DATE.fullmatch(date):
                raise ToolError(f"Date '{date}' is not in the form YYYY-MM-DD.")
            raise ToolError(f"Flight {flight_number} does not operate on {date}.")
        return found

    def me(self) -> User:
        """The authenticated user: the policy's guard on every write."""
        if self.authenticated is None:
            raise ToolError("Authenticate the user (look up their user id) before any change.")
        return self.user(self.authenticated)

    def owned(self, reservation_id: str) -> Reservation:
        """An active reservation of the authenticated user."""
        reservation = self.reservation(reservation_id)
        if reservation.user_id != self.me().user_id:
            raise ToolError(
                f"Reservation {reservation.reservation_id} does not belong to the "
                "authenticated user."
            )
        if reservation.status != "active":
            raise ToolError(f"Reservation {reservation.reservation_id} is already cancelled.")
        return reservation

    def require_not_departed(self, reservation: Reservation, *, or_cancelled: bool) -> None:
        """Refuse a change to a reservation with a flight that has left (or was cancelled)."""
        for f in reservation.flights:
            status = self.flight(f.flight_number, f.date).status
            if status in DEPARTED or (or_cancelled and status == "cancelled"):
                raise ToolError(
                    f"Flight {f.flight_number} on {f.date} is '{status}'; reservation "
                    f"{reservation.reservation_id} can no longer be changed this way."
                )

    def move_seats(self, reservation: Reservation, cabin: str, delta: int) -> None:
        """Take (negative ``delta``) or give back seats in ``cabin`` on every flight, or none."""
        flights = [self.flight(f.flight_number, f.date) for f in reservation.flights]
        for flight in flights:  # check them all first: a refused write changes nothing
            if flight.seats[cabin] + delta < 0:
                raise ToolError(
                    f"Not enough {cabin} seats on {flight.flight_number} on {flight.date} "
                    f"({flight.seats[cabin]} left)."
                )
        for flight in flights:
            seats = {**flight.seats, cabin: flight.seats[cabin] + delta}
            self.store.tables["flights"].put(flight.key, flight.model_copy(update={"seats": seats}))

    def legs(self, flights: list[FlightRef], cabin: str) -> tuple[ReservedFlight, ...]:
        """Bookable flights forming a one-way or round trip, as reserved at today's fares."""
        if len(flights) not in (1, 2):
            raise ToolError("Book one flight (one way) or two (out and back).")
        legs = []
        for ref in flights:
            flight = self.flight(ref.flight_number, ref.date)
            if flight.status != BOOKABLE:
                raise ToolError(
                    f"Flight {flight.flight_number} on {ref.date} is '{flight.status}'."
                )
            legs.append(
                ReservedFlight(
                    flight_number=flight.flight_number,
                    date=flight.date,
                    origin=flight.origin,
                    destination=flight.destination,
                    price=flight.prices[cabin],
                )
            )
        if len(legs) == 2 and (
            (legs[1].origin, legs[1].destination) != (legs[0].destination, legs[0].origin)
            or legs[1].date < legs[0].date
        ):
            raise ToolError("The second flight must fly back from the first one's destination.")
        return tuple(legs)

    def new_reservation_id(self, user_id: str, flights: list[FlightRef]) -> str:
        """An id that depends only on the booking, so that a gold replay gets the same id."""
        seed = f"{user_id}|{[(f.flight_number, f.date) for f in flights]}"
        for salt in range(1000):
            digest = hashlib.sha256(f"{seed}|{salt}".encode()).digest()
            rid = base64.b32encode(digest)[:6].decode()
            if rid not in self.store.tables["reservations"]:
                return rid
        raise ToolError("Could not allocate a reservation id.")

    def pay(
        self, user: User, payment_id: str, amount: int, *, certificate_ok: bool = False
    ) -> tuple[User, Payment]:
        """Charge ``amount`` (a refund if negative) to a method on file; gift cards move."""
        method = user.method(payment_id)
        if method is None:
            raise ToolError(f"Payment method '{payment_id}' is not on file for this user.")
        if method.source == "certificate" and not certificate_ok:
            raise ToolError("Travel certificates can only pay for a new booking.")
        methods = list(user.payment_methods)
        index = methods.index(method)
        if method.source == "gift_card":
            balance = method.amount or 0
            if amount > balance:
                raise ToolError(f"Gift card balance {balance} is less than {amount}.")
            methods[index] = method.model_copy(update={"amount": balance - amount})
        elif method.source == "certificate":
            if amount > (method.amount or 0):
                raise ToolError(
                    f"Certificate value {method.amount} is less than {amount}; a certificate "
                    "must cover the whole booking."
                )
            del methods[index]  # single use: any value left over is forfeited
        updated = user.model_copy(update={"payment_methods": tuple(methods)})
        return updated, Payment(payment_id=payment_id, amount=amount)

    def save_user(self, user: User) -> None:
        """Store a changed user."""
        self.store.tables["users"].put(user.user_id, user)

    def save(self, reservation: Reservation) -> dict[str, object]:
        """Store a changed reservation and return it as the tool result."""
        self.store.tables["reservations"].put(reservation.reservation_id, reservation)
        return reservation.model_dump(mode="json")
