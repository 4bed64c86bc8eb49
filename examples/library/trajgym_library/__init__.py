"""A library's loans desk (``library/Loans-v0``), written only through trajgym's kit.

Members ask when a loan is due, renew it (not when overdue), put a hold on a book with no
copy on the shelf, or want what only a librarian can do. The words of the requests, the
member and the expert are the YAML files beside this one.
"""

from __future__ import annotations

import random
from typing import ClassVar

from trajgym.envs.desk import SpecDeskEnv
from trajgym.envs.goals import act, requests_in_prose
from trajgym.envs.task_spec import Draw, Family, Identity, TaskSpec, phrasings_of
from trajgym.records.schema import Intent
from trajgym_library.tools import LIBRARY_TOOLKIT, LibraryState
from trajgym_library.world import MAX_RENEWALS, Member, World, due_after, make_world

D = Draw[World, Member]


def loan_status(d: D) -> Intent | None:
    """When is one of the member's loans due?"""
    loan = d.world.loans[d.rng.choice(d.entity.loans)]
    actions = [act("get_loan", loan_id=loan.loan_id)]
    return d.intent("loan_status", {"loan_id": loan.loan_id}, actions, (loan.due,))


def renew_loan(d: D) -> Intent | None:
    """Renew a loan the policy lets renew."""
    loans = [d.world.loans[i] for i in d.entity.loans]
    loans = [x for x in loans if x.status == "on loan" and x.renewals < MAX_RENEWALS]
    if not loans:
        return None
    loan_id, due = (x := d.rng.choice(loans)).loan_id, x.due
    actions = [act("get_loan", loan_id=loan_id), act("renew_loan", loan_id=loan_id)]
    return d.intent("renew_loan", {"loan_id": loan_id}, actions, (due_after(due),))


def renew_refused(d: D) -> Intent | None:
    """An overdue loan: the agent must say why it cannot renew it, and change nothing."""
    loans = [i for i in d.entity.loans if d.world.loans[i].status == "overdue"]
    if not loans:
        return None
    loan_id = d.rng.choice(loans)
    actions = [act("get_loan", loan_id=loan_id)]
    return d.intent("renew_refused", {"loan_id": loan_id}, actions, ("overdue",), "renew_loan")


def place_hold(d: D) -> Intent | None:
    """Queue the member for a book with no copy on the shelf."""
    book = d.world.books[
        d.rng.choice(sorted(b for b, x in d.world.books.items() if not x.available))
    ]
    actions = [act("find_book", title=book.title), act("place_hold", book_id=book.book_id)]
    return d.intent("place_hold", {"title": book.title}, actions, ("queue position 1",))


def transfer_to_human(d: D) -> Intent | None:
    """Something only a librarian can do: sign the member in, then transfer."""
    wish = d.rng.choice(d.phrasings["out_of_scope"])
    summary = f"The member wants to {wish.replace('my ', 'their ')}."
    actions = [act("transfer_to_human_agents", summary=summary)]
    return d.intent("transfer_to_human", {"out_of_scope": wish}, actions)


def _identify(d: D) -> Identity:
    return {"email": d.entity.email}, (act("find_member_by_email", email=d.entity.email),)


def _instruction(d: D, identity: dict[str, str], intents: list[Intent]) -> str:
    intro = f"You are {d.entity.name}, a library member; your email is {d.entity.email}."
    return " ".join([intro, *requests_in_prose(intents)])


def _draw(world: World, member_id: str, rng: random.Random, phrasing: str) -> D:
    return Draw(world, world.members[member_id], rng, phrasing, phrasings_of(__package__))


FAMILIES = {
    "loan_status": Family(loan_status, 1),
    "transfer_to_human": Family(transfer_to_human, 1),
    "renew_loan": Family(renew_loan, 2),
    "renew_refused": Family(renew_refused, 2),
    "place_hold": Family(place_hold, 2),
}
LOANS_SPEC: TaskSpec[World, D] = TaskSpec(
    env_id="library/Loans-v0",
    package=__package__,
    families=FAMILIES,
    in_distribution=tuple(FAMILIES),
    held_out=("multi_intent",),  # two requests in one conversation: ood only
    entities=lambda w, split: sorted(m for m, x in w.members.items() if x.split == split),
    draw=_draw,
    identify=_identify,
    instruction=_instruction,
    toolkit=LIBRARY_TOOLKIT,
    gold_state=LibraryState,
    chains={"multi_intent": (2, 4)},
    combinable=("loan_status", "renew_loan", "place_hold"),
    chain_slot="loan_id",
)


class LoansEnv(SpecDeskEnv[LibraryState]):
    """A library's loans desk: due dates, renewals, holds, hand-overs to a librarian."""

    task_spec: ClassVar[TaskSpec[World, D]] = LOANS_SPEC
    version: ClassVar[int] = 0
    build_world = staticmethod(make_world)
