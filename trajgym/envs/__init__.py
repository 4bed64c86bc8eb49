"""Environments, registered with gymnasium under the ``trajgym/`` namespace."""

from __future__ import annotations

import difflib
import importlib.metadata
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gymnasium

from trajgym.envs.domains import domain_package
from trajgym.errors import UnknownEnvironmentError

__all__ = ["domain_package", "env_ids", "make", "register_installed", "tasks_of", "tool_env"]

if TYPE_CHECKING:
    from trajgym.envs.base import ToolEnv
    from trajgym.records.schema import Split, Task

# Bump -vN when tools, tasks or reward change, so recorded trajectories stay comparable.
# Retail v1: a required fact only counts when said after the tools showed it (v0 took guesses).
_DOMAINS = (  # id, entry point, episode step limit
    ("trajgym/Retail-v1", "trajgym.envs.retail:RetailEnv", 60),
    ("trajgym/Workspace-v0", "trajgym.envs.workspace:WorkspaceEnv", 40),
    ("trajgym/RetailLite-v0", "trajgym.envs.retail.lite:RetailLiteEnv", 30),
    ("trajgym/Airline-v0", "trajgym.envs.airline:AirlineEnv", 60),
)
for _id, _entry_point, _steps in _DOMAINS:
    gymnasium.register(id=_id, entry_point=_entry_point, max_episode_steps=_steps)

ENTRY_POINTS = "trajgym.envs"  # installed domains: "<namespace>/<Name>-vN" = "module:EnvClass"
INSTALLED_STEP_LIMIT = 60
_installed: set[str] = set()


def register_installed() -> list[str]:
    """Register the environments installed packages declare under ``trajgym.envs``.

    Lazily, like the built-in ones: the entry point's module is imported at the first make.
    Runs on import; call it again after installing a domain in a running process.
    """
    for ep in importlib.metadata.entry_points(group=ENTRY_POINTS):
        if ep.name not in gymnasium.registry:
            gymnasium.register(
                id=ep.name, entry_point=ep.value, max_episode_steps=INSTALLED_STEP_LIMIT
            )
        _installed.add(ep.name)
    return sorted(_installed)


register_installed()


def env_ids() -> list[str]:
    """Every trajgym environment id: the built-in ones and installed domains.

    Not the ids task files play under (``trajgym/RetailLite.mine-v0``): they are one
    domain's env with other tasks, registered by whoever loaded the file.
    """
    return sorted(
        i
        for i, spec in gymnasium.registry.items()
        if (i.startswith("trajgym/") or i in _installed) and "tasks" not in spec.kwargs
    )


def make(env_id: str, **kwargs: Any) -> gymnasium.Env[Any, Any]:
    """``gymnasium.make`` with an error that suggests the id the user probably meant."""
    if env_id not in gymnasium.registry:
        known = env_ids()
        guess = difflib.get_close_matches(env_id, known + [i.split("/")[1] for i in known], n=1)
        hint = ""
        if guess:
            full = guess[0] if guess[0].startswith("trajgym/") else f"trajgym/{guess[0]}"
            hint = f" Did you mean '{full}'?"
        raise UnknownEnvironmentError(f"Unknown environment '{env_id}'.{hint} Run `trajgym envs`.")
    return gymnasium.make(env_id, **kwargs)


def tool_env(env_id: str, **kwargs: Any) -> ToolEnv[Any]:
    """The trajgym environment itself (``make(...).unwrapped``), typed as one."""
    from trajgym.envs.base import ToolEnv

    env = make(env_id, **kwargs).unwrapped
    assert isinstance(env, ToolEnv), f"{env_id} is not a trajgym ToolEnv"
    return env


def tasks_of(env_id: str, split: Split) -> Sequence[Task]:
    """Every task of an environment's split, in its fixed order."""
    env = tool_env(env_id, split=split)
    try:
        return env.tasks()
    finally:
        env.close()
