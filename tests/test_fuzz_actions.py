"""Fuzzing env.step with malformed actions: nothing raises, every case is a tool error."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trajgym.envs import make
from trajgym.envs.retail.tools import RETAIL_TOOLKIT

TOOLS = RETAIL_TOOLKIT.tools
REQUIRED = {n: t.schema["function"]["parameters"].get("required", []) for n, t in TOOLS.items()}
STRING_PARAMS = {
    n: [
        p
        for p, s in t.schema["function"]["parameters"]["properties"].items()
        if s.get("type") == "string"
    ]
    for n, t in TOOLS.items()
}
ENV = make("trajgym/Retail-v1", split="test").unwrapped

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
known_names = st.sampled_from(sorted(TOOLS))
unknown_names = st.text(min_size=0, max_size=30).filter(lambda s: s not in TOOLS)


@st.composite
def bad_call(draw: st.DrawFn) -> tuple[str, str]:
    """(name, arguments) that is wrong in one of several ways."""
    kind = draw(
        st.sampled_from(["unknown", "not_json", "not_object", "extra", "missing", "wrong_type"])
    )
    if kind == "unknown":
        return draw(unknown_names), json.dumps(
            draw(st.dictionaries(st.text(max_size=8), json_values, max_size=3))
        )
    name = draw(known_names)
    if kind == "not_json":
        # Blank arguments mean "no arguments" (some providers send "" for a no-argument call).
        text = draw(
            st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and not _is_json(s))
        )
        return name, text
    if kind == "not_object":
        value = draw(json_values.filter(lambda v: not isinstance(v, dict)))
        return name, json.dumps(value)
    if kind == "extra":
        extra = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in _props(name)))
        return name, json.dumps({extra: draw(json_values)})
    if kind == "missing" and REQUIRED[name]:
        return name, "{}"
    strings = STRING_PARAMS[name]
    if not strings:
        return draw(unknown_names), "{}"
    bad = draw(st.none() | st.integers() | st.lists(st.integers(), max_size=2) | st.booleans())
    return name, json.dumps({strings[0]: bad})


def _props(name: str) -> dict[str, Any]:
    return TOOLS[name].schema["function"]["parameters"]["properties"]


def _is_json(s: str) -> bool:
    try:
        json.loads(s)
    except ValueError:
        return False
    return True


not_messages = (
    st.integers()
    | st.lists(st.integers(), max_size=3)
    | st.none()
    | st.dictionaries(st.text(max_size=5), json_values, max_size=3).filter(
        lambda d: "role" not in d
    )
    | st.sampled_from(
        [
            {"role": "user", "content": "hi"},
            {"role": "tool", "content": "x"},
            {"role": "assistant", "tool_calls": [{"function": {"name": "x"}}]},
        ]
    )
)


@st.composite
def malformed_action(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 4)) == 0:
        return draw(not_messages)
    calls = draw(st.lists(bad_call(), min_size=1, max_size=3))
    return {
        "role": "assistant",
        "content": draw(st.none() | st.text(max_size=30)),
        "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(calls)
        ],
    }


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(action=malformed_action(), seed=st.integers(0, 50))
def test_malformed_actions_yield_tool_errors(action: Any, seed: int) -> None:
    ENV.reset(seed=seed)
    before = ENV.digest(ENV.state)
    obs, reward, terminated, truncated, _ = ENV.step(action)
    assert obs.messages, "every action gets an answer"
    for message in obs.messages:
        assert message.role == "tool"
        assert message.text.startswith("Error: ")
    if (
        isinstance(action, dict)
        and action.get("tool_calls")
        and all("id" in c for c in action["tool_calls"])
    ):
        if isinstance(action.get("content"), (str, type(None))):
            assert len(obs.messages) == len(action["tool_calls"])
    assert ENV.digest(ENV.state) == before
    assert (reward, terminated, truncated) == (0.0, False, False)
