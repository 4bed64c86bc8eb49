"""Trajectory records: OpenAI format, round trips, immutability."""

from __future__ import annotations

import pydantic
import pytest

from trajgym.agents.expert import ScriptedExpert
from trajgym.envs import make
from trajgym.records.schema import Message, Trajectory, Usage
from trajgym.rollouts.rollout import rollout


def test_trajectory_round_trips_and_is_openai_shaped() -> None:
    t = rollout(make("trajgym/Retail-v1", split="test"), ScriptedExpert(), seed=2)
    again = Trajectory.model_validate_json(t.model_dump_json())
    assert again == t
    assert t.key == ("trajgym/Retail-v1", t.task_id, 0)
    assert t.messages[0].role == "system"
    calls = [m for m in t.messages if m.tool_calls]
    answers = {m.tool_call_id for m in t.messages if m.role == "tool"}
    assert calls and {c.id for m in calls for c in m.tool_calls} == answers
    wire = calls[0].to_openai()
    assert set(wire) <= {"role", "content", "tool_calls"}
    assert wire["tool_calls"][0]["type"] == "function"
    assert isinstance(wire["tool_calls"][0]["function"]["arguments"], str)
    assert len(t.timings) == sum(1 for m in t.messages if m.role == "assistant")
    assert t.provenance.kind == "expert" and t.status == "ok" and t.schema_version == 1


def test_records_are_frozen() -> None:
    m = Message(role="user", content="hi")
    with pytest.raises(pydantic.ValidationError):
        m.content = "changed"  # type: ignore[misc]


def test_usage_adds_up() -> None:
    total = Usage() + Usage(prompt_tokens=10, completion_tokens=2, cost_usd=0.5)
    total += Usage(prompt_tokens=5, completion_tokens=1, cost_usd=0.25)
    assert total == Usage(prompt_tokens=15, completion_tokens=3, cost_usd=0.75)


def test_agent_failure_is_an_error_not_a_zero_reward() -> None:
    class Broken(ScriptedExpert):
        def act(self, messages):  # type: ignore[no-untyped-def]
            if len(messages) > 4:
                raise ConnectionError("provider unreachable")
            return super().act(messages)

    t = rollout(make("trajgym/Retail-v1", split="test"), Broken(), seed=0)
    assert t.status == "error" and t.reward is None and t.termination == "error"
    assert "provider unreachable" in (t.error or "")
