"""Errors a user of trajgym can fix; each message says how."""

from __future__ import annotations


class TrajgymError(Exception):
    """Base class for errors caused by input the user controls."""


class ConfigError(TrajgymError):
    """A configuration value is missing, malformed or unknown."""


class UnknownEnvironmentError(TrajgymError):
    """An environment id that is not registered."""


class UnknownTaskError(TrajgymError):
    """A task id that does not exist in the requested environment and split."""


class InfrastructureError(Exception):
    """A provider or simulator failure that survived retries: the episode is an error, not a 0."""


class ProviderError(InfrastructureError):
    """A model call failed (rate limits, server errors, timeouts, malformed replies)."""


class SimulatorFault(InfrastructureError):
    """The simulated user kept misbehaving (empty replies, premature stops, leaked prompts)."""
