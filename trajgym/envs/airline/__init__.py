"""The Airline reservations domain (``trajgym/Airline-v0``)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any, ClassVar

from trajgym.envs.airline.state import AirlineState
from trajgym.envs.airline.tasks import ENV_ID, make_tasks
from trajgym.envs.airline.tools import AIRLINE_TOOLKIT
from trajgym.envs.airline.world import make_world
from trajgym.envs.base import ToolEnv
from trajgym.records.schema import Split, StateChange, Task
from trajgym.tools import Toolkit


class AirlineEnv(ToolEnv[AirlineState]):
    """An airline's reservations desk: flight status, bookings, cancellations, cabins, bags."""

    env_id: ClassVar[str] = ENV_ID
    version: ClassVar[int] = 0
    toolkit: ClassVar[Toolkit[Any]] = AIRLINE_TOOLKIT
    system_prompt: ClassVar[str] = resources.files(__package__).joinpath("policy.md").read_text()

    def __init__(self, split: str = "train", world_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(split=split, **kwargs)
        self.world_seed = world_seed
        self.world = make_world(world_seed)

    def split_tasks(self, split: Split) -> Sequence[Task]:
        """Every task of ``split`` for this world."""
        return make_tasks(split, self.world_seed)  # split checked by ToolEnv

    def new_state(self, task: Task) -> AirlineState:
        """An empty overlay over the shared world: O(1)."""
        return AirlineState(self.world)

    def digest(self, state: AirlineState) -> str:
        """The overlay's canonical hash."""
        return state.digest()

    def state_changes(self, state: AirlineState) -> list[StateChange]:
        """The records the episode added, changed or deleted."""
        return state.changes()
