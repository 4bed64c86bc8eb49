"""Where a registered environment's domain lives (its package holds the data files)."""

from __future__ import annotations

import importlib

import gymnasium


def domain_package(env_id: str) -> str:
    """The package that holds an environment's data files (policy, phrasings, words)."""
    entry_point = str(gymnasium.spec(env_id).entry_point)
    module = importlib.import_module(entry_point.split(":")[0])
    return module.__package__ or module.__name__
