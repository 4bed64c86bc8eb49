"""The Airline world: a flight schedule, members and their reservations, from a seed.

The schedule runs four weeks (May 1-28, 2024) around the desk's clock (``rules.NOW``):
earlier flights have landed, later ones are scheduled, a few were cancelled by the airline.
A world is generated once per seed and shared, immutable, by every episode. Users are
partitioned between the splits so that no user, reservation or payment method appears in
two splits' tasks.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import random
import string
from importlib import resources
from typing import Any

import yaml

from trajgym.envs.airline.records import (
    CABINS,
    Cabin,
    Flight,
    Passenger,
    Payment,
    PaymentMethod,
    Reservation,
    ReservedFlight,
    User,
    World,
    flight_key,
)
from trajgym.envs.airline.rules import (
    BAG_FEE,
    INSURANCE_FEE,
    NOW,
    TODAY,
    is_certificate,
    nonfree_bags,
)
from trajgym.envs.desk import split_of

FIRST_DAY = dt.date(2024, 5, 1)
DAYS = 28
_ROUTE_PAIRS = 45  # undirected airport pairs served, each in both directions
_TIERS = {"regular": 5, "silver": 3, "gold": 2}
_CABIN_WEIGHTS = {"basic_economy": 3, "economy": 5, "business": 2}
_ID_CHARS = string.ascii_uppercase + string.digits


@functools.cache
def _names() -> dict[str, Any]:
    return yaml.safe_load(resources.files(__package__).joinpath("world.yaml").read_text())


def day(offset: int) -> str:
    """The ISO date ``offset`` days after the first day of the schedule."""
    return (FIRST_DAY + dt.timedelta(days=offset)).isoformat()


def shift(date: str, days: int) -> str:
    """``date`` moved by ``days`` days."""
    return (dt.date.fromisoformat(date) + dt.timedelta(days=days)).isoformat()


@functools.lru_cache(maxsize=4)
def make_world(seed: int = 0, n_users: int = 400) -> World:
    """Generate (once per arguments) the world for ``seed``."""
    rng = random.Random(seed)
    airports: dict[str, str] = dict(_names()["airports"])
    flights = _make_schedule(rng, sorted(airports))
    world = World(seed=seed, airports=airports, flights=flights, users={}, reservations={})
    users: dict[str, User] = {}
    reservations: dict[str, Reservation] = {}
    for index in range(n_users):
        user = _make_user(rng, index, n_users, users)
        booked = []
        for _ in range(rng.choice((1, 2, 2, 3, 4))):
            r = _make_reservation(rng, world, user, reservations)
            reservations[r.reservation_id] = r
            booked.append(r)
        users[user.user_id] = user.model_copy(
            update={"reservations": tuple(r.reservation_id for r in booked)}
        )
    return world.model_copy(update={"users": users, "reservations": reservations})


def _make_schedule(rng: random.Random, codes: list[str]) -> dict[str, Flight]:
    pairs = rng.sample(list(itertools.combinations(codes, 2)), k=_ROUTE_PAIRS)
    flights: dict[str, Flight] = {}
    number = 100
    for a, b in pairs:
        minutes = rng.randrange(60, 360, 5)
        base = rng.randint(60, 220)
        for origin, destination in ((a, b), (b, a)):
            for departure in sorted(rng.sample(range(6 * 60, 18 * 60, 5), k=rng.randint(1, 3))):
                number += rng.randint(1, 7)
                times = (_clock(departure), _clock(departure + minutes))
                for offset in range(DAYS):
                    flight = _operate(
                        rng, f"HAT{number:03d}", day(offset), origin, destination, times, base
                    )
                    flights[flight.key] = flight
    return flights


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _operate(
    rng: random.Random,
    number: str,
    date: str,
    origin: str,
    destination: str,
    times: tuple[str, str],
    base: int,
) -> Flight:
    """One day of a flight: its status follows the clock, its seats and fares the seed."""
    departure, arrival = times
    now = NOW[11:16]
    if date < TODAY:
        status = "cancelled" if rng.random() < 0.03 else "landed"
    elif date == TODAY and departure <= now:
        status = "landed" if arrival <= now else "flying"
    elif date == TODAY:
        status = rng.choices(("on time", "delayed", "cancelled"), weights=(6, 3, 1))[0]
    else:
        status = "cancelled" if rng.random() < 0.06 else "scheduled"
    basic = base + rng.randint(-30, 40)
    return Flight(
        flight_number=number,
        date=date,
        origin=origin,
        destination=destination,
        departure=departure,
        arrival=arrival,
        status=status,
        seats={
            "basic_economy": rng.randint(0, 12),
            "economy": rng.randint(0, 20),
            "business": rng.randint(0, 8),
        },
        prices={
            "basic_economy": basic,
            "economy": int(basic * 1.6) + rng.randint(0, 30),
            "business": basic * 4 + rng.randint(0, 150),
        },
    )


def random_person(rng: random.Random) -> Passenger:
    """A traveller with a plausible name and date of birth."""
    names = _names()
    return Passenger(
        first_name=rng.choice(names["first_names"]),
        last_name=rng.choice(names["last_names"]),
        dob=f"{rng.randint(1950, 2005)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
    )


def _make_user(rng: random.Random, index: int, total: int, taken: dict[str, User]) -> User:
    person = random_person(rng)
    user_id = f"{person.first_name.lower()}_{person.last_name.lower()}_{rng.randint(100, 999)}"
    while user_id in taken:
        user_id = f"{person.first_name.lower()}_{person.last_name.lower()}_{rng.randint(100, 999)}"
    brands = rng.sample(_names()["card_brands"], k=rng.choice((1, 1, 2)))
    methods = [
        PaymentMethod(
            id=f"credit_card_{rng.randint(10**6, 10**7 - 1)}",
            source="credit_card",
            brand=brand,
            last_four=f"{rng.randint(0, 9999):04d}",
        )
        for brand in brands
    ]
    if rng.random() < 0.5:
        methods.append(
            PaymentMethod(
                id=f"gift_card_{rng.randint(10**6, 10**7 - 1)}",
                source="gift_card",
                amount=rng.randint(0, 500),
            )
        )
    if rng.random() < 0.35:
        methods.append(
            PaymentMethod(
                id=f"certificate_{rng.randint(10**6, 10**7 - 1)}",
                source="certificate",
                amount=rng.choice((100, 150, 200, 250, 500)),
            )
        )
    tier = rng.choices(list(_TIERS), weights=list(_TIERS.values()))[0]
    return User(
        user_id=user_id,
        **person.model_dump(),
        membership=tier,
        payment_methods=tuple(methods),
        reservations=(),
        split=split_of(index, total),
    )


def new_reservation_id(rng: random.Random, taken: dict[str, Any]) -> str:
    """A fresh six-character reservation id."""
    while True:
        rid = "".join(rng.choice(_ID_CHARS) for _ in range(6))
        if rid not in taken:
            return rid


def _make_reservation(
    rng: random.Random, world: World, user: User, taken: dict[str, Reservation]
) -> Reservation:
    origin, destination = rng.choice(sorted(world.routes))
    out = day(rng.randint(2, DAYS - 3))
    legs = [(origin, destination, out)]
    if rng.random() < 0.5:
        legs.append((destination, origin, shift(out, rng.randint(1, 2))))
    cabin: Cabin = rng.choices(CABINS, weights=[_CABIN_WEIGHTS[c] for c in CABINS])[0]
    flights = []
    for o, d, date in legs:
        f = world.flights[flight_key(rng.choice(world.routes[(o, d)]), date)]
        flights.append(
            ReservedFlight(
                flight_number=f.flight_number,
                date=date,
                origin=o,
                destination=d,
                price=f.prices[cabin],
            )
        )
    me = Passenger(first_name=user.first_name, last_name=user.last_name, dob=user.dob)
    passengers = (me, *(random_person(rng) for _ in range(rng.choice((0, 0, 0, 1, 1, 2)))))
    insurance = "yes" if rng.random() < 0.35 else "no"
    total_bags = rng.randint(0, len(passengers) + 1)
    nonfree = nonfree_bags(user.membership, cabin, len(passengers), total_bags)
    price = sum(f.price for f in flights) * len(passengers) + BAG_FEE * nonfree
    price += (INSURANCE_FEE if insurance == "yes" else 0) * len(passengers)
    cancelled = rng.random() < 0.05
    payments = _payments(rng, user, price)
    if cancelled:
        payments += tuple(
            Payment(payment_id=p.payment_id, amount=-p.amount)
            for p in payments
            if not is_certificate(p.payment_id)
        )
    return Reservation(
        reservation_id=new_reservation_id(rng, taken),
        user_id=user.user_id,
        origin=origin,
        destination=destination,
        flight_type="round_trip" if len(flights) == 2 else "one_way",
        cabin=cabin,
        flights=tuple(flights),
        passengers=passengers,
        payment_history=payments,
        created_at=_booked_at(rng, out),
        total_baggages=total_bags,
        nonfree_baggages=nonfree,
        insurance=insurance,
        status="cancelled" if cancelled else "active",
    )


def _booked_at(rng: random.Random, first_flight: str) -> str:
    """When a reservation was made: a fifth of upcoming trips within the last 24 hours."""
    if first_flight > TODAY and rng.random() < 0.2:
        moment = dt.datetime.fromisoformat(NOW) - dt.timedelta(minutes=rng.randint(30, 23 * 60))
    else:
        latest = min(dt.date.fromisoformat(first_flight), dt.date.fromisoformat(TODAY))
        moment = dt.datetime.combine(latest, dt.time()) - dt.timedelta(
            days=rng.randint(2, 40), minutes=rng.randint(0, 24 * 60 - 1)
        )
    return moment.isoformat(timespec="seconds")


def _payments(rng: random.Random, user: User, price: int) -> tuple[Payment, ...]:
    """One card or gift card pays; sometimes a (since used up) certificate pays first."""
    payer = rng.choice([m for m in user.payment_methods if m.source != "certificate"])
    if rng.random() < 0.2:
        value = min(price, rng.choice((100, 150, 200)))
        used = Payment(payment_id=f"certificate_{rng.randint(10**6, 10**7 - 1)}", amount=value)
        rest = (Payment(payment_id=payer.id, amount=price - value),) if price > value else ()
        return (used, *rest)
    return (Payment(payment_id=payer.id, amount=price),)
