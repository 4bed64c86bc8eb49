"""Airline: world, tasks and splits, verification that cannot be gamed, and the tools' rules."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable

import pytest

from trajgym.agents.baselines import DoNothingAgent, RandomToolAgent
from trajgym.agents.expert import ScriptedExpert
from trajgym.envs import env_ids, make
from trajgym.envs.airline.families import FAMILIES
from trajgym.envs.airline.records import Reservation, User, World
from trajgym.envs.airline.rules import FREE_BAGS, NOW, TODAY
from trajgym.envs.airline.state import AirlineState
from trajgym.envs.airline.tasks import OOD_FAMILIES, make_tasks
from trajgym.envs.airline.tools import AIRLINE_TOOLKIT
from trajgym.envs.airline.world import make_world
from trajgym.records.schema import FunctionCall, Message, ToolCall
from trajgym.rollouts.rollout import rollout
from trajgym.tools import ToolError

ENV_ID = "trajgym/Airline-v0"
SPLITS = ("train", "test", "ood")
TOOLS = AIRLINE_TOOLKIT.tools


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(0)


def find(world: World, test: Callable[[User, Reservation], bool]) -> tuple[User, Reservation]:
    """The first (user, active reservation) of the world that passes ``test``."""
    for r in world.reservations.values():
        user = world.users[r.user_id]
        if r.status == "active" and test(user, r):
            return user, r
    raise AssertionError("no such reservation in the world")


def upcoming(world: World, r: Reservation) -> bool:
    return all(
        world.flights[f"{f.flight_number}|{f.date}"].status == "scheduled" for f in r.flights
    )


def signed_in(world: World, user: User) -> AirlineState:
    state = AirlineState(world)
    TOOLS["get_user_details"](state, user_id=user.user_id)
    return state


# World, tasks and splits -----------------------------------------------------------------


def test_world_size_and_task_counts(world: World) -> None:
    assert ENV_ID in env_ids()
    assert len(world.users) == 400 and 800 <= len(world.reservations) <= 1200
    assert len(world.airports) == 18 and len(world.routes) >= 60
    assert {f.status for f in world.flights.values()} == {
        "scheduled",
        "on time",
        "delayed",
        "cancelled",
        "flying",
        "landed",
    }
    assert {u.membership for u in world.users.values()} == {"regular", "silver", "gold"}
    counts = {s: len(make_tasks(s)) for s in SPLITS}
    assert counts["train"] >= 2000 and counts["test"] >= 600 and counts["ood"] >= 600
    in_dist = {t.family for t in make_tasks("train")}
    assert in_dist == set(FAMILIES) == {t.family for t in make_tasks("test")}
    assert not in_dist & set(OOD_FAMILIES)
    assert {t.family for t in make_tasks("ood")} == in_dist | set(OOD_FAMILIES)
    assert {t.difficulty for t in make_tasks("ood")} == {1, 2, 3, 4, 5, 6}


def test_task_ids_unique_deterministic_and_phrasings_held_out() -> None:
    for split in SPLITS:
        ids = [t.id for t in make_tasks(split)]
        assert len(ids) == len(set(ids))
    assert make_tasks.__wrapped__("test") == make_tasks("test")  # regenerated: same tasks
    assert {t.phrasing_set for t in make_tasks("train")} == {"A"}
    assert {t.phrasing_set for t in make_tasks("test")} == {"A"}
    assert {t.phrasing_set for t in make_tasks("ood")} == {"B"}
    train_openings = {i.request for t in make_tasks("train") for i in t.goal.intents}
    ood_openings = {i.request for t in make_tasks("ood") for i in t.goal.intents}
    assert not train_openings & ood_openings


def test_no_user_reservation_or_payment_method_shared_between_splits(world: World) -> None:
    def entities(split: str) -> set[str]:
        found = set()
        for task in make_tasks(split):
            found.add(task.goal.identity["user_id"])
            for action in task.gold_actions:
                for key in ("user_id", "reservation_id", "payment_id"):
                    if key in action.arguments:
                        found.add(str(action.arguments[key]))
        return found

    train, test, ood = (entities(s) for s in SPLITS)
    assert not train & test and not train & ood and not test & ood
    for split in SPLITS:
        users = {t.goal.identity["user_id"] for t in make_tasks(split)}
        assert {world.users[u].split for u in users} == {split}


# Verification ----------------------------------------------------------------------------


@pytest.mark.parametrize("split", SPLITS)
def test_expert_solves_every_task(split: str) -> None:
    env = make(ENV_ID, split=split)
    failures: Counter[str] = Counter()
    for i, task in enumerate(make_tasks(split)):
        t = rollout(env, ScriptedExpert(), seed=i, task_id=task.id)
        if not t.success:
            failures[task.family] += 1
    assert not failures, failures


@pytest.mark.parametrize("agent", [DoNothingAgent, RandomToolAgent])
def test_floor_agents_score_zero_on_200_test_tasks(agent: type) -> None:
    env = make(ENV_ID, split="test")
    rewards = [
        rollout(env, agent(), seed=i, task_id=t.id).reward
        for i, t in enumerate(make_tasks("test")[:200])
    ]
    assert rewards == [0.0] * 200


def first(family: str, split: str = "test") -> str:
    return next(t.id for t in make_tasks(split) if t.family == family)


class SkipsConfirmation(ScriptedExpert):
    """The expert, but it never waits for a 'yes' before a write."""

    def act(self, messages):  # type: ignore[no-untyped-def]
        message = super().act(messages)
        while message.content and "(yes/no)" in message.content:
            message = super().act(messages)
        return message


def test_write_without_confirmation_is_a_violation() -> None:
    env = make(ENV_ID, split="test")
    t = rollout(env, SkipsConfirmation(), seed=0, task_id=first("cancel_reservation"))
    assert t.verdict is not None and t.verdict.state_match and all(t.verdict.outputs.values())
    assert t.verdict.violations and t.reward == 0.0


class CancelsAnyway(ScriptedExpert):
    """The expert, but where the policy says no it asks, cancels, then says no anyway."""

    def act(self, messages):  # type: ignore[no-untyped-def]
        if getattr(self, "queued", None):
            return self.queued.pop(0)
        message = super().act(messages)
        if message.content and message.content.startswith("I'm sorry, but I can't cancel"):
            slots = self.context.task.goal.intents[0].slots
            args = {"reservation_id": slots["reservation_id"], "reason": slots["reason"]}
            call = ToolCall(
                id="x", function=FunctionCall(name="cancel_reservation", arguments=json.dumps(args))
            )
            self.queued = [Message(role="assistant", tool_calls=(call,)), message]
            return Message(role="assistant", content="Shall I cancel it anyway (yes/no)?")
        return message


def test_a_refused_cancellation_fails_if_the_agent_cancels_anyway() -> None:
    env = make(ENV_ID, split="test")
    t = rollout(env, CancelsAnyway(), seed=0, task_id=first("policy_refusal_cancel"))
    cancelled = [m for m in t.messages if m.role == "tool" and '"status":"cancelled"' in m.text]
    assert cancelled  # the back office let it through: the policy is the agent's to keep
    assert t.verdict is not None and not t.verdict.violations and all(t.verdict.outputs.values())
    assert not t.verdict.state_match and t.reward == 0.0


def test_wrong_baggage_count_fails_state_check() -> None:
    class UnderCharges(ScriptedExpert):
        def act(self, messages):  # type: ignore[no-untyped-def]
            message = super().act(messages)
            calls = message.tool_calls or ()
            if calls and calls[0].function.name == "update_reservation_baggages":
                args = json.loads(calls[0].function.arguments)
                args["nonfree_baggages"] -= 1  # one bag fewer charged than the policy says
                call = ToolCall(
                    id=calls[0].id,
                    function=FunctionCall(name=calls[0].function.name, arguments=json.dumps(args)),
                )
                return Message(role="assistant", tool_calls=(call,))
            return message

    env = make(ENV_ID, split="test")
    t = rollout(env, UnderCharges(), seed=0, task_id=first("add_baggage"))
    assert t.verdict is not None and not t.verdict.state_match and t.reward == 0.0


def test_untold_total_fails_even_with_the_right_state() -> None:
    class Mute(ScriptedExpert):
        def act(self, messages):  # type: ignore[no-untyped-def]
            message = super().act(messages)
            if message.content and "The total is" in message.content:
                return Message(role="assistant", content="Booked. Anything else I can do?")
            return message

    env = make(ENV_ID, split="test")
    t = rollout(env, Mute(), seed=0, task_id=first("book_flight"))
    assert t.verdict is not None and t.verdict.state_match and not all(t.verdict.outputs.values())
    assert t.reward == 0.0


# Tools -----------------------------------------------------------------------------------


def test_basic_economy_cabin_cannot_change(world: World) -> None:
    user, r = find(world, lambda u, r: r.cabin == "basic_economy" and upcoming(world, r))
    state = signed_in(world, user)
    before = state.digest()
    card = next(m.id for m in user.payment_methods if m.source == "credit_card")
    with pytest.raises(ToolError, match="basic economy reservation cannot be changed"):
        TOOLS["update_reservation_cabin"](
            state, reservation_id=r.reservation_id, cabin="business", payment_id=card
        )
    assert state.digest() == before


def test_writes_need_the_owner_signed_in(world: World) -> None:
    user, r = find(world, lambda u, r: upcoming(world, r))
    state = AirlineState(world)
    with pytest.raises(ToolError, match="Authenticate the user"):
        TOOLS["cancel_reservation"](state, reservation_id=r.reservation_id, reason="other")
    other = next(u for u in world.users.values() if u.user_id != user.user_id)
    TOOLS["get_user_details"](state, user_id=other.user_id)
    with pytest.raises(ToolError, match="does not belong to the authenticated user"):
        TOOLS["cancel_reservation"](state, reservation_id=r.reservation_id, reason="other")


def upgrade_cost(world: World, r: Reservation) -> int:
    flights = [world.flights[f"{f.flight_number}|{f.date}"] for f in r.flights]
    return sum(
        f.prices["business"] - b.price for f, b in zip(flights, r.flights, strict=True)
    ) * len(r.passengers)


def gift_card(user: User) -> int:
    return next((m.amount or 0 for m in user.payment_methods if m.source == "gift_card"), -1)


@pytest.mark.parametrize("covers", [True, False])
def test_cabin_change_charges_a_gift_card_up_to_its_balance(world: World, covers: bool) -> None:
    def fits(u: User, r: Reservation) -> bool:
        if r.cabin != "economy" or not upcoming(world, r) or gift_card(u) < 0:
            return False
        return (upgrade_cost(world, r) <= gift_card(u)) == covers

    user, r = find(world, fits)
    gift = next(m for m in user.payment_methods if m.source == "gift_card")
    diff = upgrade_cost(world, r)
    state = signed_in(world, user)
    args = {"reservation_id": r.reservation_id, "cabin": "business", "payment_id": gift.id}
    if not covers:
        with pytest.raises(ToolError, match=f"Gift card balance {gift.amount} is less than {diff}"):
            TOOLS["update_reservation_cabin"](state, **args)
        assert state.digest() == AirlineState(world).digest()
        return
    updated = TOOLS["update_reservation_cabin"](state, **args)
    assert updated["cabin"] == "business" and updated["payment_history"][-1]["amount"] == diff
    after = TOOLS["get_user_details"](state, user_id=user.user_id)
    balance = next(m["amount"] for m in after["payment_methods"] if m["id"] == gift.id)
    assert balance == (gift.amount or 0) - diff


def test_certificates_pay_only_for_bookings_and_are_used_once(world: World) -> None:
    user = next(
        u
        for u in world.users.values()
        if any(m.source == "certificate" and (m.amount or 0) >= 500 for m in u.payment_methods)
    )
    cert = next(m for m in user.payment_methods if m.source == "certificate")
    state = signed_in(world, user)
    flight = next(
        f
        for f in world.flights.values()
        if f.status == "scheduled" and f.seats["economy"] and f.prices["economy"] <= 400
    )
    me = {"first_name": user.first_name, "last_name": user.last_name, "dob": user.dob}
    booking = {
        "user_id": user.user_id,
        "flights": [{"flight_number": flight.flight_number, "date": flight.date}],
        "cabin": "economy",
        "passengers": [me],
        "payment_id": cert.id,
        "total_baggages": 2,
        "nonfree_baggages": 1,
        "insurance": True,
    }
    made = TOOLS["book_reservation"](state, **booking)
    assert made["payment_history"] == [
        {"payment_id": cert.id, "amount": flight.prices["economy"] + 50 + 30}
    ]
    assert (
        made["created_at"] == NOW
        and made["reservation_id"] in state.user(user.user_id).reservations
    )
    assert state.user(user.user_id).method(cert.id) is None  # used once, the rest forfeited
    seats = state.flight(flight.flight_number, flight.date).seats["economy"]
    assert seats == flight.seats["economy"] - 1
    replay = signed_in(world, user)
    TOOLS["book_reservation"](replay, **booking)
    assert replay.digest() == state.digest()  # same booking, same id: gold replays match
    with pytest.raises(ToolError, match="not on file"):
        TOOLS["book_reservation"](state, **booking)


def test_cancellation_refunds_all_but_certificates(world: World) -> None:
    def fits(u: User, r: Reservation) -> bool:
        paid_by = [p.payment_id for p in r.payment_history]
        return upcoming(world, r) and paid_by[0].startswith("certificate_") and len(paid_by) == 2

    user, r = find(world, fits)
    state = signed_in(world, user)
    result = TOOLS["cancel_reservation"](state, reservation_id=r.reservation_id, reason="health")
    certificate, card = r.payment_history
    assert result["status"] == "cancelled" and result["cancel_reason"] == "health"
    assert result["payment_history"][-1] == {"payment_id": card.payment_id, "amount": -card.amount}
    assert sum(p["amount"] for p in result["payment_history"]) == certificate.amount
    with pytest.raises(ToolError, match="already cancelled"):
        TOOLS["cancel_reservation"](state, reservation_id=r.reservation_id, reason="health")


def test_departed_flights_and_removed_bags_are_refused(world: World) -> None:
    user, flown = find(
        world,
        lambda u, r: (
            world.flights[f"{r.flights[0].flight_number}|{r.flights[0].date}"].status == "landed"
        ),
    )
    state = signed_in(world, user)
    with pytest.raises(ToolError, match="'landed'"):
        TOOLS["cancel_reservation"](state, reservation_id=flown.reservation_id, reason="other")
    user, r = find(world, lambda u, r: upcoming(world, r) and r.total_baggages > 0)
    state = signed_in(world, user)
    card = next(m.id for m in user.payment_methods if m.source == "credit_card")
    with pytest.raises(ToolError, match="can be added, not removed"):
        TOOLS["update_reservation_baggages"](
            state,
            reservation_id=r.reservation_id,
            total_baggages=r.total_baggages - 1,
            nonfree_baggages=0,
            payment_id=card,
        )


def test_search_status_and_calculate(world: World) -> None:
    state = AirlineState(world)
    (origin, destination), numbers = next(iter(world.routes.items()))
    date = "2024-05-20"
    found = TOOLS["search_direct_flights"](state, origin=origin, destination=destination, date=date)
    scheduled = [n for n in numbers if world.flights[f"{n}|{date}"].status == "scheduled"]
    assert [f["flight_number"] for f in found] == scheduled
    with pytest.raises(ToolError, match="Unknown airport 'Boston'"):
        TOOLS["search_direct_flights"](state, origin="Boston", destination="JFK", date=date)
    with pytest.raises(ToolError, match="YYYY-MM-DD"):
        TOOLS["get_flight_status"](state, flight_number=numbers[0], date="May 20")
    past = TOOLS["get_flight_status"](state, flight_number=numbers[0], date="2024-05-02")
    assert past["status"] in ("landed", "cancelled") and TODAY == "2024-05-15"
    assert TOOLS["calculate"](state, expression="2 * (120 + 35) - 50") == "260"
    with pytest.raises(ToolError, match="Cannot evaluate"):
        TOOLS["calculate"](state, expression="__import__('os').getcwd()")


def test_policy_states_the_rules_the_code_applies() -> None:
    policy = make(ENV_ID).unwrapped.system_prompt
    assert "2024-05-15 15:00" in policy and NOW.startswith("2024-05-15T15:00")
    table = {
        cells[0]: [int(c) for c in cells[1:]]
        for line in policy.splitlines()
        if (cells := [c.strip() for c in line.strip().strip("|").split("|")])[0] in FREE_BAGS
    }
    assert table == {
        t: [a["basic_economy"], a["economy"], a["business"]] for t, a in FREE_BAGS.items()
    }
    assert "$30 per passenger" in policy and "costs $50" in policy


def test_tool_schemas_describe_every_argument() -> None:
    schemas = {s["function"]["name"]: s["function"] for s in AIRLINE_TOOLKIT.schemas}
    assert 10 <= len(schemas) <= 12
    assert {n for n, t in TOOLS.items() if t.writes} == {
        "book_reservation",
        "cancel_reservation",
        "update_reservation_cabin",
        "update_reservation_baggages",
    }
    assert TOOLS["transfer_to_human_agents"].ends_episode
    for name, schema in schemas.items():
        assert schema["description"], name
        for arg, spec in schema["parameters"]["properties"].items():
            assert spec.get("description"), (name, arg)
    booking = schemas["book_reservation"]["parameters"]
    assert booking["$defs"]["Passenger"]["required"] == ["first_name", "last_name", "dob"]
    assert booking["properties"]["cabin"]["enum"] == ["basic_economy", "economy", "business"]
    assert "title" not in json.dumps(booking)
