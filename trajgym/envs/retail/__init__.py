"""The Retail customer-service domain (``trajgym/Retail-v1``)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any, ClassVar

from trajgym.envs.base import ToolEnv
from trajgym.envs.retail.state import RetailState
from trajgym.envs.retail.tasks import ENV_ID, make_tasks
from trajgym.envs.retail.tools import RETAIL_TOOLKIT
from trajgym.envs.retail.world import make_world
from trajgym.records.schema import Split, StateChange, Task
from trajgym.tools import Toolkit


class RetailEnv(ToolEnv[RetailState]):
    """An online store's customer-service desk: orders, returns, exchanges, addresses."""

    env_id: ClassVar[str] = ENV_ID
    version: ClassVar[int] = 1
    toolkit: ClassVar[Toolkit[Any]] = RETAIL_TOOLKIT
    system_prompt: ClassVar[str] = resources.files(__package__).joinpath("policy.md").read_text()

    def __init__(self, split: str = "train", world_seed: int = 0, **kwargs: Any) -> None:
        super().__init__(split=split, **kwargs)
        self.world_seed = world_seed
        self.world = make_world(world_seed)

    def split_tasks(self, split: Split) -> Sequence[Task]:
        """Every task of ``split`` for this world."""
        return make_tasks(split, self.world_seed)  # split checked by ToolEnv

    def new_state(self, task: Task) -> RetailState:
        """An empty overlay over the shared world: O(1)."""
        return RetailState(self.world)

    def digest(self, state: RetailState) -> str:
        """The overlay's canonical hash."""
        return state.digest()

    def state_changes(self, state: RetailState) -> list[StateChange]:
        """The records the episode added, changed or deleted."""
        return state.changes()
