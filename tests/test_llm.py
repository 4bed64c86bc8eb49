"""The litellm client over real HTTP against a local fake server: retries, errors, costs, keys."""

from __future__ import annotations

import json

import pytest

from trajgym.agents.base import EpisodeContext
from trajgym.agents.teacher import LLMAgent
from trajgym.envs import make
from trajgym.errors import ConfigError, ProviderError
from trajgym.llm.client import LLMClient, LLMConfig
from trajgym.records.schema import Message, Usage
from trajgym.rollouts.rollout import rollout
from trajgym.testing.fake_openai import FakeOpenAIServer, FaultPlan

HELLO = [{"role": "user", "content": "hi"}]


def reply(text: str):
    return lambda body: {"role": "assistant", "content": text}


def config(server: FakeOpenAIServer, **kw) -> LLMConfig:
    defaults = dict(
        model="openai/fake",
        api_base=server.base_url,
        backoff_s=0.01,
        backoff_max_s=0.05,
        timeout_s=2,
    )
    return LLMConfig(**{**defaults, **kw})


@pytest.mark.parametrize("kind", ["rate_limit", "server_error", "malformed", "timeout"])
def test_transient_faults_are_retried_then_reported(kind: str) -> None:
    faults = FaultPlan(rate=1.0, kinds=(kind,), timeout_s=1.0)
    with FakeOpenAIServer(reply("x"), faults=faults) as server:
        client = LLMClient(config(server, max_attempts=3, timeout_s=0.3))
        with pytest.raises(ProviderError, match="after up to 3 attempts"):
            client.complete(HELLO)
        assert server.stats.faults[kind] == 3
        assert client.retries == 2 and client.calls == 0


def test_faults_then_success_and_usage_adds_up() -> None:
    with FakeOpenAIServer(reply("hello there"), faults=FaultPlan(rate=0.5, seed=3)) as server:
        client = LLMClient(config(server, max_attempts=20, timeout_s=0.5))
        results = [client.complete(HELLO) for _ in range(10)]
    assert all(r.message.content == "hello there" for r in results)
    assert client.calls == 10 and client.retries == sum(server.stats.faults.values()) > 0
    total = sum((r.usage for r in results), Usage())
    assert client.usage == total and total.prompt_tokens > 0


def test_bad_requests_are_not_retried() -> None:
    def refuse(body):
        raise AssertionError("never called")

    with FakeOpenAIServer(refuse) as server:
        client = LLMClient(config(server, model="openai/fake", api_base=server.base_url + "/nope"))
        with pytest.raises(ProviderError, match="NotFoundError"):
            client.complete(HELLO)
        assert client.retries == 0


def test_costs_from_configured_prices() -> None:
    with FakeOpenAIServer(reply("ok")) as server:
        client = LLMClient(config(server, input_cost_per_token=1e-6, output_cost_per_token=2e-6))
        r = client.complete(HELLO)
    expected = r.usage.prompt_tokens * 1e-6 + r.usage.completion_tokens * 2e-6
    assert r.usage.cost_usd == pytest.approx(expected) and expected > 0


def test_keys_never_live_in_configs(monkeypatch) -> None:
    with pytest.raises(ValueError, match="never stored in configs"):
        LLMConfig(model="openai/x", api_key="sk-secret")
    monkeypatch.delenv("TRAJGYM_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="TRAJGYM_TEST_KEY"):
        LLMClient(LLMConfig(model="openai/x", api_key_env="TRAJGYM_TEST_KEY"))


def test_key_is_sent_but_never_recorded(monkeypatch, tmp_path) -> None:
    secret = "sk-test-5f2c9a1e-do-not-leak"
    monkeypatch.setenv("TRAJGYM_TEST_KEY", secret)
    with FakeOpenAIServer(reply("Could you give me your email address?")) as server:
        cfg = config(server, api_key_env="TRAJGYM_TEST_KEY")
        t = rollout(make("trajgym/Retail-v1", split="test"), LLMAgent(cfg), seed=0)
    assert server.authorizations == {f"Bearer {secret}"}
    assert secret not in t.model_dump_json() and secret not in json.dumps(cfg.model_dump())


def first_turn(agent: LLMAgent):
    """Start an episode and let ``agent`` answer a first 'hi'."""
    env = make("trajgym/Retail-v1", split="test")
    _, info = env.reset(seed=0)
    agent.reset(
        EpisodeContext(task=info["task"], system_prompt="p", tools=tuple(info["tools"]), seed=0)
    )
    return env, agent.act(
        [Message(role="system", content="policy"), Message(role="user", content="hi")]
    )


def test_native_tool_calls_are_recorded_as_written() -> None:
    bad = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c9",
                "type": "function",
                "function": {"name": "get_order_details", "arguments": "{'order_id': 1"},
            }
        ],
    }
    with FakeOpenAIServer(lambda body: bad) as server:
        agent = LLMAgent(config(server))
        env, message = first_turn(agent)
        assert server.requests[0]["tools"] and len(server.requests[0]["tools"]) == 14
    assert message.tool_calls[0].function.arguments == "{'order_id': 1"
    obs, *_ = env.step(message)
    assert "not valid JSON" in obs.messages[0].text


def test_text_mode_puts_tools_in_prompt_and_parses_calls() -> None:
    text = 'Sure.\n<tool_call>{"name": "list_product_types", "arguments": {}}</tool_call>'
    with FakeOpenAIServer(reply(text)) as server:
        agent = LLMAgent(config(server), tool_mode="text")
        env, message = first_turn(agent)
        sent = server.requests[0]
    assert "tools" not in sent and "list_product_types()" in sent["messages"][0]["content"]
    assert (
        message.content == "Sure." and message.tool_calls[0].function.name == "list_product_types"
    )
    assert agent.provenance.decoding["tool_mode"] == "text" and agent.usage.prompt_tokens > 0
