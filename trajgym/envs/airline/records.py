"""The Airline world's records: flights, users with payment methods, and reservations.

Every record is frozen so that one world can be shared by every episode; an episode's
changes are new records in a copy-on-write overlay (:mod:`trajgym.envs.store`). Money is
in whole dollars, dates are ISO strings (``2024-05-20``), times ``HH:MM``.
"""

from __future__ import annotations

import functools
from typing import Literal

from trajgym.envs.desk import Record
from trajgym.records.schema import Split

Cabin = Literal["basic_economy", "economy", "business"]
CABINS: tuple[Cabin, ...] = ("basic_economy", "economy", "business")
Tier = Literal["regular", "silver", "gold"]
FlightStatus = Literal["scheduled", "on time", "delayed", "cancelled", "flying", "landed"]
_MONTHS = "January February March April May June July August September October November December"


def flight_key(flight_number: str, date: str) -> str:
    """The key of one day's operation of a flight in the flights table."""
    return f"{flight_number}|{date}"


def spoken_date(date: str) -> str:
    """An ISO date as a person says it: '2024-05-20' -> 'May 20'."""
    _, month, day = date.split("-")
    return f"{_MONTHS.split()[int(month) - 1]} {int(day)}"


class Flight(Record):
    """One day's operation of a scheduled flight, with the seats left and fares per cabin."""

    flight_number: str
    date: str
    origin: str
    destination: str
    departure: str
    arrival: str
    status: FlightStatus
    seats: dict[str, int]
    prices: dict[str, int]

    @property
    def key(self) -> str:
        """This flight's key in the flights table."""
        return flight_key(self.flight_number, self.date)


class FlightRef(Record):
    """A flight on a date, as the agent names it when booking."""

    flight_number: str
    date: str


class PaymentMethod(Record):
    """A credit card, a gift card (with a balance) or a travel certificate (with a value)."""

    id: str
    source: Literal["credit_card", "gift_card", "certificate"]
    brand: str | None = None
    last_four: str | None = None
    amount: int | None = None

    def spoken(self) -> str:
        """How a user refers to this payment method."""
        if self.source == "credit_card":
            return f"my {self.brand} credit card ending in {self.last_four}"
        if self.source == "gift_card":
            return "my gift card"
        return "my travel certificate"


class Passenger(Record):
    """A traveller on a reservation."""

    first_name: str
    last_name: str
    dob: str


class User(Record):
    """A member of the airline's loyalty programme."""

    user_id: str
    first_name: str
    last_name: str
    dob: str
    membership: Tier
    payment_methods: tuple[PaymentMethod, ...]
    reservations: tuple[str, ...]
    split: Split

    def method(self, payment_id: str) -> PaymentMethod | None:
        """The payment method on file with ``payment_id``, if any."""
        return next((m for m in self.payment_methods if m.id == payment_id), None)


class ReservedFlight(Record):
    """A flight as booked on a reservation, with the fare paid per passenger."""

    flight_number: str
    date: str
    origin: str
    destination: str
    price: int


class Payment(Record):
    """A charge (positive) or refund (negative) to a payment method."""

    payment_id: str
    amount: int


class Reservation(Record):
    """A booking: its flights, cabin, passengers, bags, insurance and payments."""

    reservation_id: str
    user_id: str
    origin: str
    destination: str
    flight_type: Literal["one_way", "round_trip"]
    cabin: Cabin
    flights: tuple[ReservedFlight, ...]
    passengers: tuple[Passenger, ...]
    payment_history: tuple[Payment, ...]
    created_at: str
    total_baggages: int
    nonfree_baggages: int
    insurance: Literal["yes", "no"]
    status: Literal["active", "cancelled"]
    cancel_reason: str | None = None

    @property
    def paid(self) -> int:
        """The net amount paid so far."""
        return sum(p.amount for p in self.payment_history)


class World(Record):
    """Everything generated from one seed."""

    seed: int
    airports: dict[str, str]
    flights: dict[str, Flight]
    users: dict[str, User]
    reservations: dict[str, Reservation]

    @functools.cached_property
    def routes(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """Index: (origin, destination) -> flight numbers, by departure time."""
        found: dict[tuple[str, str], dict[str, str]] = {}
        for f in self.flights.values():
            found.setdefault((f.origin, f.destination), {})[f.flight_number] = f.departure
        return {r: tuple(sorted(n, key=lambda x: (n[x], x))) for r, n in found.items()}
