"""The Retail customer-service domain (``trajgym/Retail-v1``)."""

from __future__ import annotations

from importlib import resources
from typing import Any, ClassVar

from trajgym.envs.desk import DeskEnv
from trajgym.envs.retail.state import RetailState
from trajgym.envs.retail.tasks import ENV_ID, make_tasks
from trajgym.envs.retail.tools import RETAIL_TOOLKIT
from trajgym.envs.retail.world import make_world
from trajgym.records.schema import Task
from trajgym.tools import Toolkit


class RetailEnv(DeskEnv[RetailState]):
    """An online store's customer-service desk: orders, returns, exchanges, addresses."""

    env_id: ClassVar[str] = ENV_ID
    version: ClassVar[int] = 1
    toolkit: ClassVar[Toolkit[Any]] = RETAIL_TOOLKIT
    system_prompt: ClassVar[str] = resources.files(__package__).joinpath("policy.md").read_text()

    build_world = staticmethod(make_world)
    make_tasks = staticmethod(make_tasks)

    def new_state(self, task: Task) -> RetailState:
        """An empty overlay over the shared world: O(1)."""
        return RetailState(self.world)
