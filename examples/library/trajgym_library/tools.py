"""The loans desk's tools, over one episode's copy-on-write view of the library."""

from __future__ import annotations

from typing import Any

from trajgym.envs.desk import DeskState, transfer_to_human_agents
from trajgym.tools import ToolError, Toolkit, tool
from trajgym_library.world import MAX_RENEWALS, Book, Loan, World, due_after


class LibraryState(DeskState):
    """One episode's view of the library, plus who is signed in."""

    world: World

    def __init__(self, world: World) -> None:
        super().__init__(world, {"books": world.books, "loans": world.loans})

    def get(self, table: str, key: str) -> Any:
        """The record under ``key`` ('L00042', 'B007'), or a tool error."""
        found = self.store.tables[table].get(key.strip().upper())
        if found is None:
            raise ToolError(f"No {table[:-1]} '{key}'.")
        return found

    def member_id(self) -> str:
        """The signed-in member: the policy's guard on every change."""
        if self.authenticated is None:
            raise ToolError("Find the member by email before any change.")
        return self.authenticated


def _shown(state: LibraryState, loan: Loan) -> dict[str, object]:
    title = state.get("books", loan.book_id).title
    return {**loan.model_dump(exclude={"member_id", "book_id"}), "title": title}


@tool
def find_member_by_email(state: LibraryState, email: str) -> str:
    """Find a member's id by the email on their account; this signs the member in."""
    member_id = state.world.member_by_email.get(email.strip().lower())
    if member_id is None:
        raise ToolError(f"No member with email '{email}'.")
    state.authenticated = member_id
    return member_id


@tool
def get_loan(state: LibraryState, loan_id: str) -> dict[str, object]:
    """Get a loan's book, due date, renewals so far and status (loan ids look like L00042)."""
    return _shown(state, state.get("loans", loan_id))


@tool(writes=True)
def renew_loan(state: LibraryState, loan_id: str) -> dict[str, object]:
    """Renew a loan for 14 more days (not if overdue, renewed twice, or held by others)."""
    loan: Loan = state.get("loans", loan_id)
    if loan.member_id != state.member_id():
        raise ToolError(f"Loan {loan.loan_id} is not the signed-in member's.")
    if loan.status != "on loan" or loan.renewals >= MAX_RENEWALS:
        raise ToolError(
            f"Loan {loan.loan_id} cannot be renewed: {loan.status}, renewed {loan.renewals}x."
        )
    if state.get("books", loan.book_id).holds:
        raise ToolError(f"Loan {loan.loan_id} cannot be renewed: other members hold the book.")
    renewed = loan.model_copy(update={"due": due_after(loan.due), "renewals": loan.renewals + 1})
    state.store.tables["loans"].put(loan.loan_id, renewed)
    return _shown(state, renewed)


@tool
def find_book(state: LibraryState, title: str) -> dict[str, object]:
    """Find a book by its exact title: its id, copies on the shelf and holds queued."""
    for key, book in state.world.books.items():
        if book.title.lower() == title.strip().lower():
            found: Book = state.get("books", key)
            return {**found.model_dump(exclude={"holds"}), "holds": len(found.holds)}
    raise ToolError(f"No book titled '{title}'.")


@tool(writes=True)
def place_hold(state: LibraryState, book_id: str) -> dict[str, object]:
    """Queue the signed-in member for a book with no copy on the shelf (ids look like B007)."""
    member_id, book = state.member_id(), state.get("books", book_id)
    if book.available > 0:
        raise ToolError(f"'{book.title}' has {book.available} copies on the shelf: no hold needed.")
    if member_id in book.holds:
        raise ToolError(f"The member already holds '{book.title}'.")
    held = book.model_copy(update={"holds": (*book.holds, member_id)})
    state.store.tables["books"].put(book.book_id, held)
    return {
        "book_id": book.book_id,
        "title": book.title,
        "queue": f"queue position {len(held.holds)}",
    }


LIBRARY_TOOLKIT: Toolkit[LibraryState] = Toolkit(
    [find_member_by_email, get_loan, renew_loan, find_book, place_hold, transfer_to_human_agents]
)
