"""What the service-desk domains (Retail, Airline) share.

A seeded world of frozen records, an episode state that overlays it copy-on-write, the
hand-over to a human, and the env class. Resetting is O(1) (a new empty overlay) and the
digest covers only what changed, so a step costs tens of microseconds however large the world.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict

from trajgym.envs.base import ToolEnv, overlay_changes
from trajgym.envs.store import Store
from trajgym.envs.task_spec import TaskSpec, make_tasks
from trajgym.records.schema import Split, StateChange, Task
from trajgym.tools import tool

# Users (customers) are dealt to the splits in these shares, so no entity is in two splits.
SPLIT_SHARES: tuple[tuple[Split, float], ...] = (("train", 0.6), ("test", 0.2), ("ood", 0.2))


class Record(BaseModel):
    """Base for world records: frozen so the world can be shared between episodes."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Transfer(Record):
    """A hand-over to a human agent (the summary is free text and not part of the state)."""

    user_id: str | None


def split_of(index: int, total: int) -> Split:
    """The split of the ``index``-th of ``total`` users (see :data:`SPLIT_SHARES`)."""
    cumulative = 0.0
    for split, share in SPLIT_SHARES:
        cumulative += share
        if index < cumulative * total:
            return split
    return "ood"


class DeskState:
    """One episode's view of the world: copy-on-write tables plus the session."""

    def __init__(self, world: Any, tables: Mapping[str, Mapping[str, BaseModel]]) -> None:
        self.world = world
        self.bases: dict[str, Mapping[str, BaseModel]] = {**tables, "transfers": {}}
        self.store = Store(self.bases)
        self.authenticated: str | None = None
        self.transfer_summary: str | None = None

    def digest(self) -> str:
        """Canonical hash of the episode's state."""
        return self.store.digest()

    def changes(self) -> list[StateChange]:
        """The records this episode changed (the overlay is exactly that)."""
        return overlay_changes(self.store, self.bases)


@tool(ends_episode=True)
def transfer_to_human_agents(state: DeskState, summary: str) -> str:
    """Hand the conversation to a human agent, for requests the policy does not cover.

    Args:
        summary: A short summary of the user's issue for the human agent.
    """
    state.store.tables["transfers"].put("0", Transfer(user_id=state.authenticated))
    state.transfer_summary = summary
    return "Transfer successful."


S = TypeVar("S", bound=DeskState)


class DeskEnv(ToolEnv[S], Generic[S], abc.ABC):
    """A desk over one shared world, built once per env from ``world_seed``.

    A domain names its world builder and its task maker (functions of the seed, kept as
    static attributes) and makes its state (``new_state``: an empty overlay, O(1)).
    """

    build_world: ClassVar[Callable[[int], Any]]
    make_tasks: ClassVar[Callable[[Split, int], Sequence[Task]]]

    def __init__(self, split: str = "train", world_seed: int = 0, **kwargs: Any) -> None:
        self.world_seed = world_seed
        self.world = type(self).build_world(world_seed)  # before: a task file's check needs it
        super().__init__(split=split, **kwargs)

    def split_tasks(self, split: Split) -> Sequence[Task]:
        """Every task of ``split`` for this world."""
        return type(self).make_tasks(split, self.world_seed)  # split checked by ToolEnv

    def digest(self, state: S) -> str:
        """The overlay's canonical hash."""
        return state.digest()

    def state_changes(self, state: S) -> list[StateChange]:
        """The records the episode added, changed or deleted."""
        return state.changes()


class SpecDeskEnv(DeskEnv[S], Generic[S]):
    """A desk whose tools, tasks and policy all come from its :class:`TaskSpec`.

    A subclass names ``task_spec``, ``version`` and ``build_world`` (a function of the seed);
    the policy is ``policy.md`` in the spec's package, and a task's state is the spec's
    ``gold_state`` over the world. (``spec`` is gymnasium's: the registration.)
    """

    task_spec: ClassVar[TaskSpec[Any, Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        spec = cls.__dict__.get("task_spec")
        if spec is None:
            return
        cls.env_id, cls.toolkit = spec.env_id, spec.toolkit
        cls.system_prompt = resources.files(spec.package).joinpath("policy.md").read_text()

        @functools.cache
        def tasks(split: Split, world_seed: int) -> Sequence[Task]:
            return make_tasks(spec, cls.build_world(world_seed), world_seed, split)

        cls.make_tasks = staticmethod(tasks)

    def new_state(self, task: Task) -> S:
        """The spec's fresh state over the shared world."""
        return cast(S, self.task_spec.gold_state(self.world))
