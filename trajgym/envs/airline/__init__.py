"""The Airline reservations domain (``trajgym/Airline-v0``)."""

from __future__ import annotations

from importlib import resources
from typing import Any, ClassVar

from trajgym.envs.airline.state import AirlineState
from trajgym.envs.airline.tasks import ENV_ID, make_tasks
from trajgym.envs.airline.tools import AIRLINE_TOOLKIT
from trajgym.envs.airline.world import make_world
from trajgym.envs.desk import DeskEnv
from trajgym.records.schema import Task
from trajgym.tools import Toolkit


class AirlineEnv(DeskEnv[AirlineState]):
    """An airline's reservations desk: flight status, bookings, cancellations, cabins, bags."""

    env_id: ClassVar[str] = ENV_ID
    version: ClassVar[int] = 0
    toolkit: ClassVar[Toolkit[Any]] = AIRLINE_TOOLKIT
    system_prompt: ClassVar[str] = resources.files(__package__).joinpath("policy.md").read_text()

    build_world = staticmethod(make_world)
    make_tasks = staticmethod(make_tasks)

    def new_state(self, task: Task) -> AirlineState:
        """An empty overlay over the shared world: O(1)."""
        return AirlineState(self.world)
