"""Gymnasium conformance, seeded determinism, and the env's handling of its inputs."""

from __future__ import annotations

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

from trajgym.agents.baselines import RandomToolAgent
from trajgym.agents.expert import ScriptedExpert
from trajgym.envs import env_ids, make
from trajgym.envs.users.base import load_personas
from trajgym.errors import ConfigError, UnknownEnvironmentError, UnknownTaskError
from trajgym.records.schema import Message
from trajgym.rollouts.rollout import rollout


@pytest.mark.parametrize("env_id", env_ids())
def test_check_env_passes(env_id: str) -> None:
    env = gymnasium.make(env_id)
    check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", env_ids())
@pytest.mark.parametrize("agent", [ScriptedExpert, RandomToolAgent])
def test_same_seed_same_episode_byte_for_byte(env_id: str, agent: type) -> None:
    def episode(seed: int) -> str:
        env = make(env_id, split="train")
        t = rollout(env, agent(), seed=seed)
        return t.model_copy(update={"timings": ()}).model_dump_json()

    first, again, other = episode(11), episode(11), episode(12)
    assert first == again
    assert first != other


def test_reset_info_carries_task_prompt_and_tools(retail_test_env) -> None:
    obs, info = retail_test_env.reset(seed=3)
    task = info["task"]
    assert task.split == "test" and info["task_id"] == task.id
    assert "authenticate" in info["system_prompt"].lower()
    assert {t["function"]["name"] for t in info["tools"]} >= {
        "cancel_pending_order",
        "get_order_details",
    }
    assert [m.role for m in obs.messages] == ["user"]
    assert obs.messages[0].content and info["persona"] in load_personas()


def test_reset_options_pick_task_and_persona(retail_test_env) -> None:
    task_id = retail_test_env.unwrapped.tasks("test")[5].id
    obs, info = retail_test_env.reset(seed=0, options={"task_id": task_id, "persona": "impatient"})
    assert info["task_id"] == task_id and info["persona"] == "impatient"
    with pytest.raises(UnknownTaskError, match="trajgym tasks"):
        retail_test_env.reset(options={"task_id": "test-nope-00000"})


def test_user_mistakes_get_errors_that_say_what_to_do() -> None:
    with pytest.raises(UnknownEnvironmentError, match="Did you mean 'trajgym/Retail-v1'"):
        make("Retial-v0")
    with pytest.raises(ConfigError, match="Choose one of: train, test, ood"):
        make("trajgym/Retail-v1", split="validation")
    with pytest.raises(ConfigError, match="Known personas"):
        make("trajgym/Retail-v1", persona="grumpy")


def test_step_text_goes_to_user_and_tool_calls_to_tools(retail_test_env) -> None:
    retail_test_env.reset(seed=1)
    obs, reward, terminated, truncated, _ = retail_test_env.step(
        "Could you tell me your email address?"
    )
    assert [m.role for m in obs.messages] == ["user"] and "@" in obs.messages[0].text
    assert (reward, terminated, truncated) == (0.0, False, False)
    call = {"id": "c1", "function": {"name": "list_product_types", "arguments": "{}"}}
    obs, *_ = retail_test_env.step({"role": "assistant", "tool_calls": [call]})
    assert obs.messages[0].role == "tool" and "T-Shirt" in obs.messages[0].text


def test_truncation_after_max_steps() -> None:
    env = make("trajgym/Retail-v1", split="test", max_episode_steps=3)
    env.reset(seed=0)
    call = {"id": "c", "function": {"name": "list_product_types", "arguments": "{}"}}
    results = [env.step(Message(role="assistant", tool_calls=[call])) for _ in range(3)]
    assert [r[3] for r in results] == [False, False, True]
