"""Airline task families: each builds one intent for a user from the world, or None.

A builder draws on one user's reservations (or, to book, on the schedule), works out the
gold tool calls by the policy (:mod:`trajgym.envs.airline.rules`) and the facts the agent
must tell the user. Slot values are in the user's words ('May 20', 'my gift card').
"""

from __future__ import annotations

from typing import Any

from trajgym.envs.airline.records import (
    CABINS,
    PaymentMethod,
    Reservation,
    User,
    World,
    flight_key,
    spoken_date,
)
from trajgym.envs.airline.rules import (
    BAG_FEE,
    CANCEL_REASONS,
    DEPARTED,
    INSURANCE_FEE,
    TODAY,
    cancel_allowed,
    nonfree_bags,
    refund_amount,
)
from trajgym.envs.airline.world import random_person, shift
from trajgym.envs.goals import act
from trajgym.envs.task_spec import Draw as BaseDraw
from trajgym.envs.task_spec import Family, phrasings_of
from trajgym.records.schema import Action, Intent


def phrasings() -> dict[str, Any]:
    """The user's words: request templates per kind and phrasing set, and slot values."""
    return phrasings_of(__package__)


class Draw(BaseDraw[World, User]):
    """A draw over one traveller (the kit's :class:`~trajgym.envs.task_spec.Draw`)."""

    @property
    def user(self) -> User:
        """The traveller the task is about."""
        return self.entity

    def reservations(self) -> list[Reservation]:
        """The user's active reservations."""
        found = (self.world.reservations[r] for r in self.user.reservations)
        return [r for r in found if r.status == "active"]

    def statuses(self, reservation: Reservation) -> list[str]:
        """The status of each flight of ``reservation``."""
        return [
            self.world.flights[flight_key(f.flight_number, f.date)].status
            for f in reservation.flights
        ]


def _flight_checks(r: Reservation) -> list[Action]:
    return [act("get_flight_status", flight_number=f.flight_number, date=f.date) for f in r.flights]


def _changeable(d: Draw) -> list[Reservation]:
    """Active reservations whose flights have neither left nor been cancelled."""
    return [
        r
        for r in d.reservations()
        if not any(s in DEPARTED or s == "cancelled" for s in d.statuses(r))
    ]


def _payers(d: Draw, amount: int) -> list[PaymentMethod]:
    """Cards, and gift cards that cover ``amount``: what may pay a change."""
    return [
        m
        for m in d.user.payment_methods
        if m.source == "credit_card" or (m.source == "gift_card" and (m.amount or 0) >= amount)
    ]


# Families --------------------------------------------------------------------------------


def flight_status(d: Draw) -> Intent | None:
    """The user asks how one of their flights is doing."""
    flights = [f for r in d.reservations() for f in r.flights]
    if not flights:
        return None
    f = d.rng.choice(flights)
    status = d.world.flights[flight_key(f.flight_number, f.date)].status
    return d.intent(
        "flight_status",
        {"flight_number": f.flight_number, "date": spoken_date(f.date)},
        [act("get_flight_status", flight_number=f.flight_number, date=f.date)],
        (status,),
    )


def _cancellable(d: Draw) -> list[tuple[Reservation, bool]]:
    """Active reservations with no departed flight, and whether the airline cancelled one."""
    found = []
    for r in d.reservations():
        statuses = d.statuses(r)
        if not any(s in DEPARTED for s in statuses):
            found.append((r, "cancelled" in statuses))
    return found


def cancel_reservation(d: Draw) -> Intent | None:
    """The user cancels a reservation the policy lets them cancel; they learn the refund."""
    options = _cancellable(d)
    d.rng.shuffle(options)
    for r, airline_cancelled in options:
        reasons = [x for x in CANCEL_REASONS if x != "airline cancelled flight"]
        d.rng.shuffle(reasons)
        if airline_cancelled:  # the reason the user gives is then the airline's
            reasons = ["airline cancelled flight"]
        allowed = [x for x in reasons if cancel_allowed(r, d.user.membership, x, airline_cancelled)]
        if allowed and refund_amount(r) > 0:
            rid = r.reservation_id
            return d.intent(
                "cancel_reservation",
                {"reservation_id": rid, "reason": allowed[0]},
                [
                    act("get_reservation_details", reservation_id=rid),
                    *_flight_checks(r),
                    act("cancel_reservation", reservation_id=rid, reason=allowed[0]),
                ],
                (str(refund_amount(r)),),
            )
    return None


def policy_refusal_cancel(d: Draw) -> Intent | None:
    """The user asks to cancel what the policy does not allow: refuse, change nothing."""
    options = [(r, c) for r, c in _cancellable(d) if not c]
    d.rng.shuffle(options)
    reasons = [x for x in CANCEL_REASONS if x != "airline cancelled flight"]
    for r, _ in options:
        refused = [x for x in reasons if not cancel_allowed(r, d.user.membership, x, False)]
        if refused:
            rid = r.reservation_id
            return d.intent(
                "policy_refusal_cancel",
                {"reservation_id": rid, "reason": d.rng.choice(refused)},
                [act("get_reservation_details", reservation_id=rid), *_flight_checks(r)],
                ("insurance",),
            )
    return None


def policy_refusal_change(d: Draw) -> Intent | None:
    """The user asks to change the cabin of an upcoming basic economy trip: refuse."""
    options = [r for r in _changeable(d) if r.cabin == "basic_economy"]
    if not options:
        return None
    r = d.rng.choice(options)
    return d.intent(
        "policy_refusal_change",
        {"reservation_id": r.reservation_id, "cabin": d.rng.choice(("economy", "business"))},
        [act("get_reservation_details", reservation_id=r.reservation_id)],
        ("basic",),
    )


def add_baggage(d: Draw) -> Intent | None:
    """The user adds checked bags; the agent works out the fee from tier, cabin and party."""
    options = _changeable(d)
    d.rng.shuffle(options)
    for r in options:
        people = len(r.passengers)
        added = d.rng.randint(1, 3)
        total = r.total_baggages + added
        nonfree = nonfree_bags(d.user.membership, r.cabin, people, total)
        fee = BAG_FEE * (nonfree - r.nonfree_baggages)
        payers = _payers(d, fee)
        if fee <= 0 or not payers:
            continue
        method = d.rng.choice(payers)
        bags = f"{added} more checked bag{'s' if added > 1 else ''}"
        rid = r.reservation_id
        return d.intent(
            "add_baggage",
            {"reservation_id": rid, "bags": bags, "payment": method.spoken()},
            [
                act("get_reservation_details", reservation_id=rid),
                act(
                    "update_reservation_baggages",
                    reservation_id=rid,
                    total_baggages=total,
                    nonfree_baggages=nonfree,
                    payment_id=method.id,
                ),
            ],
            (str(fee),),
        )
    return None


def change_cabin(d: Draw) -> Intent | None:
    """The user moves a reservation between economy and business; they learn the difference."""
    options = [r for r in _changeable(d) if r.cabin != "basic_economy"]
    d.rng.shuffle(options)
    for r in options:
        cabin = "business" if r.cabin == "economy" else "economy"
        people = len(r.passengers)
        flights = [d.world.flights[flight_key(f.flight_number, f.date)] for f in r.flights]
        if any(f.seats[cabin] < people for f in flights):
            continue
        diff = (
            sum(f.prices[cabin] - b.price for f, b in zip(flights, r.flights, strict=True)) * people
        )
        payers = _payers(d, diff)
        if not diff or not payers:
            continue
        method = d.rng.choice(payers)
        rid = r.reservation_id
        return d.intent(
            "change_cabin",
            {"reservation_id": rid, "cabin": cabin, "payment": method.spoken()},
            [
                act("get_reservation_details", reservation_id=rid),
                *_flight_checks(r),
                act(
                    "update_reservation_cabin",
                    reservation_id=rid,
                    cabin=cabin,
                    payment_id=method.id,
                ),
            ],
            (str(abs(diff)),),
        )
    return None


def book_flight(d: Draw) -> Intent | None:
    """The user books a one-way trip: search, pick the flight they describe, price it, book."""
    origin, destination = d.rng.choice(sorted(d.world.routes))
    date = shift(TODAY, d.rng.randint(1, 13))
    cabin = d.rng.choice(CABINS)
    companions = [random_person(d.rng) for _ in range(d.rng.choice((0, 0, 1)))]
    people = 1 + len(companions)
    flights = [d.world.flights[flight_key(n, date)] for n in d.world.routes[(origin, destination)]]
    flights = [f for f in flights if f.status == "scheduled" and f.seats[cabin] >= people]
    if not flights:
        return None
    preference = d.rng.choice(("earliest", "cheapest"))
    chosen = flights[0]
    if preference == "cheapest":
        chosen = min(flights, key=lambda f: f.prices[cabin])
        if sum(f.prices[cabin] == chosen.prices[cabin] for f in flights) > 1:
            return None
    total_bags = d.rng.randint(0, people + 1)
    nonfree = nonfree_bags(d.user.membership, cabin, people, total_bags)
    insured = d.rng.random() < 0.4
    total = chosen.prices[cabin] * people + BAG_FEE * nonfree + INSURANCE_FEE * people * insured
    payers = [
        m for m in d.user.payment_methods if m.source == "credit_card" or (m.amount or 0) >= total
    ]
    method = d.rng.choice(payers)
    me = {"first_name": d.user.first_name, "last_name": d.user.last_name, "dob": d.user.dob}
    seats = "just my own seat" + "".join(
        f" and one for my friend {p.first_name} {p.last_name}, born {p.dob}" for p in companions
    )
    slots = {
        "origin": d.world.airports[origin],
        "destination": d.world.airports[destination],
        "date": spoken_date(date),
        "cabin": cabin.replace("_", " "),
        "flight": phrasings()["flight_preference"][preference],
        "passengers": seats,
        "bags": f"{total_bags or 'no'} checked bag{'' if total_bags == 1 else 's'}",
        "insurance": "with travel insurance" if insured else "without travel insurance",
        "payment": method.spoken(),
    }
    booking = act(
        "book_reservation",
        user_id=d.user.user_id,
        flights=[{"flight_number": chosen.flight_number, "date": date}],
        cabin=cabin,
        passengers=[me, *(p.model_dump() for p in companions)],
        payment_id=method.id,
        total_baggages=total_bags,
        nonfree_baggages=nonfree,
        insurance=insured,
    )
    search = act("search_direct_flights", origin=origin, destination=destination, date=date)
    return d.intent("book_flight", slots, [search, booking], (str(total),))


def transfer_to_human(d: Draw) -> Intent | None:
    """The user wants something out of scope: authenticate, then transfer."""
    wish = d.rng.choice(phrasings()["out_of_scope"])
    summary = f"The user wants to {wish.replace('my ', 'their ')}."
    return d.intent(
        "transfer_to_human",
        {"out_of_scope": wish},
        [act("transfer_to_human_agents", summary=summary)],
    )


FAMILIES: dict[str, Family[Draw]] = {
    "flight_status": Family(flight_status, 1),
    "transfer_to_human": Family(transfer_to_human, 1),
    "policy_refusal_change": Family(policy_refusal_change, 2),
    "cancel_reservation": Family(cancel_reservation, 3),
    "policy_refusal_cancel": Family(policy_refusal_cancel, 3),
    "add_baggage": Family(add_baggage, 3),
    "change_cabin": Family(change_cabin, 4),
    "book_flight": Family(book_flight, 5),
}
