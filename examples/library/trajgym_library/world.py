"""The library's world: members, books and loans, generated once per seed and shared."""

from __future__ import annotations

import datetime
import functools
import random
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import yaml

from trajgym.envs.desk import Record, split_of
from trajgym.records.schema import Split

TODAY = datetime.date(2026, 3, 2)
LOAN_DAYS, MAX_RENEWALS = 14, 2


class Member(Record):
    """A library member (the entity a task is about)."""

    member_id: str
    name: str
    email: str
    split: Split
    loans: tuple[str, ...]


class Book(Record):
    """A title in the catalogue: copies on the shelf, and members queued for it."""

    book_id: str
    title: str
    available: int
    holds: tuple[str, ...] = ()


class Loan(Record):
    """A book a member has out."""

    loan_id: str
    member_id: str
    book_id: str
    due: str  # ISO date
    renewals: int
    status: Literal["on loan", "overdue"]


@dataclass(frozen=True)
class World:
    """Every member, book and loan, and members by email."""

    members: dict[str, Member]
    books: dict[str, Book]
    loans: dict[str, Loan]
    member_by_email: dict[str, str]


def due_after(due: str, days: int = LOAN_DAYS) -> str:
    """The due date ``days`` later."""
    return (datetime.date.fromisoformat(due) + datetime.timedelta(days=days)).isoformat()


@functools.cache
def make_world(seed: int = 0, n_members: int = 300) -> World:
    """The world for ``seed``: members dealt to the splits, each with one to three loans."""
    rng = random.Random(seed)
    words = yaml.safe_load(resources.files(__package__).joinpath("world.yaml").read_text())
    titles = [f"The {a} {n}" for a in words["title_words"] for n in words["title_nouns"]]
    books = {
        f"B{i:03d}": Book(book_id=f"B{i:03d}", title=t, available=rng.choice((0, 0, 1, 2)))
        for i, t in enumerate(titles)
    }
    members: dict[str, Member] = {}
    loans: dict[str, Loan] = {}
    for i in range(n_members):
        member_id, name = f"M{i:04d}", rng.choice(words["first_names"])
        name = f"{name} {rng.choice(words['last_names'])}"
        for book_id in rng.sample(sorted(books), k=rng.randint(1, 3)):
            late = rng.random() < 0.25
            due = TODAY + datetime.timedelta(
                days=rng.randint(-9, -1) if late else rng.randint(1, 13)
            )
            loan_id = f"L{len(loans):05d}"
            loans[loan_id] = Loan(
                loan_id=loan_id,
                member_id=member_id,
                book_id=book_id,
                due=due.isoformat(),
                renewals=rng.choice((0, 0, 1, 2)),
                status="overdue" if late else "on loan",
            )
        email = f"{name.replace(' ', '.')}{i}@example.org".lower()
        mine = tuple(k for k, x in loans.items() if x.member_id == member_id)
        members[member_id] = Member(
            member_id=member_id, name=name, email=email, split=split_of(i, n_members), loans=mine
        )
    return World(members, books, loans, {m.email: k for k, m in members.items()})
