"""The control of the ``rationale`` comparison: the same trajectories with the plans removed.

A teacher that says its plan (what it will do and why) before acting records those
sentences as ``Message.plan``: they open the message's content. Stripping them leaves output
imitation of the same episodes: the same tool calls, questions, confirmations and answers,
byte for byte, without the reasoning. A message that was only a plan keeps its tool calls
with content None, as the OpenAI format has it (a plan never stands alone: the schema
refuses a plan-only message without a call).
"""

from __future__ import annotations

from pathlib import Path

from trajgym.records.schema import Message, TeacherLabel, Trajectory
from trajgym.records.store import TrajectoryStore, read_input

STRIPPED = "strip_rationale"  # the edit recorded in the stripped trajectory's provenance


def strip_message(message: Message) -> Message:
    """``message`` without its plan sentences; a message without a plan is returned as is."""
    if message.plan is None:
        return message
    rest = (message.content or "")[len(message.plan) + 1 :]
    return Message.model_validate(message.model_dump(exclude={"plan"}) | {"content": rest or None})


def strip_rationale(t: Trajectory) -> Trajectory:
    """``t`` with the plan sentences removed from every assistant message (and label).

    User and tool messages, tool calls, reward, verdict and judgement are kept as they are;
    the provenance records the edit. Stripping twice changes nothing more.
    """
    if STRIPPED in t.provenance.edits:
        return t
    labels = tuple(
        TeacherLabel(index=label.index, message=strip_message(label.message)) for label in t.labels
    )
    provenance = t.provenance.model_copy(update={"edits": (*t.provenance.edits, STRIPPED)})
    return t.model_copy(
        update={
            "messages": tuple(strip_message(m) for m in t.messages),
            "labels": labels,
            "provenance": provenance,
        }
    )


def strip_file(src: Path, dst: Path) -> int:
    """Write every trajectory of ``src``, stripped, to ``dst``; return how many it wrote.

    ``dst`` is a store: a resumed run skips the trajectories already there. ``src`` missing
    or empty is an error (:func:`~trajgym.records.store.read_input`).
    """
    written = 0
    with TrajectoryStore(dst) as store:
        for t in read_input(src):
            written += store.append(strip_rationale(t))
    return written
