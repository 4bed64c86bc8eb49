"""Training curves sent to experiment trackers (TensorBoard, Trackio, W&B...) by accelerate.

A run names its trackers in ``report_to``; accelerate writes to each of them, from the main
process only. This module says which names accelerate knows and which are installed, gives
the ``Accelerator`` its tracking arguments, and starts and finishes the trackers with the
resolved config as hyperparameters (flattened to the scalars every tracker takes).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel

PROJECT = "trajgym"
"""The trackers' project: TensorBoard's events land in ``output_dir/tracking/trajgym``."""


def tracking_dir(output_dir: Path) -> Path:
    """Where a run's tracker logs go (those trackers that write files)."""
    return output_dir / "tracking"


def check_trackers(names: Sequence[str]) -> list[str]:
    """``names`` if accelerate knows each tracker and its package is installed.

    Raises:
        ValueError: naming the tracker, and the valid names or the package to install
            (accelerate itself would skip a missing tracker with only a debug log).
    """
    if not names:
        return []
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
    from accelerate.utils import LoggerType

    installed = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            close = difflib.get_close_matches(name, LOGGER_TYPE_TO_CLASS, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            known = ", ".join(sorted(LOGGER_TYPE_TO_CLASS))
            raise ValueError(f"unknown tracker '{name}'.{hint} accelerate knows: {known}")
        if name in set(LoggerType.list()) and name not in installed:
            raise ValueError(f"tracker '{name}' is not installed; install it: `pip install {name}`")
    return list(dict.fromkeys(names))


def accelerator_arguments(report_to: Sequence[str], output_dir: Path) -> dict[str, Any]:
    """The ``Accelerator`` arguments for these trackers (none when there are none)."""
    if not report_to:
        return {}
    return {"log_with": list(report_to), "project_dir": str(tracking_dir(output_dir))}


def start_trackers(accelerator: Any, config: BaseModel, stage: str, step: int) -> None:
    """Start the run's trackers, its resolved config as their hyperparameters.

    ``step`` is where the run resumes: TensorBoard drops what an interrupted run logged
    past its checkpoint, so that a resumed curve has one point a step.
    """
    if not accelerator.log_with:
        return
    values = hyperparameters(config) | {"stage": stage}
    name = f"{stage} {values.get('output_dir', '')}".strip()
    accelerator.init_trackers(
        PROJECT,
        config=values,
        init_kwargs={
            "tensorboard": {"purge_step": step + 1} if step else {},
            "wandb": {"name": name},
            "trackio": {"name": name},
        },
    )


def finish_trackers(accelerator: Any) -> None:
    """Flush and close the trackers.

    Not ``accelerator.end_training()``: that also destroys the process group, which a
    process that trains again (a pipeline's SFT then RL under ``accelerate launch``) needs.
    """
    for tracker in accelerator.trackers:
        tracker.finish()


def hyperparameters(config: BaseModel) -> dict[str, bool | int | float | str]:
    """The config as flat ``a.b: value`` pairs; lists, ``None`` and empty sections as JSON."""
    flat: dict[str, bool | int | float | str] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                add(f"{prefix}{key}.", inner)
        elif isinstance(value, bool | int | float | str):
            flat[prefix[:-1]] = value
        else:
            flat[prefix[:-1]] = json.dumps(value)

    add("", config.model_dump(mode="json"))
    return flat
