"""The LLM-driven simulated user over HTTP: prompts, role flipping, and simulator faults."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from trajgym.agents.expert import ScriptedExpert
from trajgym.envs import make
from trajgym.envs.users.base import STOP, get_persona
from trajgym.envs.users.llm import LLMUser, SimulatorStats
from trajgym.errors import SimulatorFault
from trajgym.llm.client import LLMClient, LLMConfig
from trajgym.records.schema import Message
from trajgym.rollouts.rollout import rollout
from trajgym.testing.fake_openai import FakeOpenAIServer, scripted_user_responder


def replies(*texts: str):
    it: Iterator[str] = iter(texts)
    return lambda body: {"role": "assistant", "content": next(it)}


def user_for(
    server: FakeOpenAIServer, stats: SimulatorStats, family: str = "cancel_pending_order"
) -> LLMUser:
    env = make("trajgym/Retail-v1", split="test").unwrapped
    task = next(t for t in env.tasks("test") if t.family == family)
    client = LLMClient(LLMConfig(model="openai/fake", api_base=server.base_url))
    return LLMUser(client, task, get_persona("confused"), seed=0, stats=stats)


def test_prompt_holds_goal_and_persona_and_roles_are_flipped() -> None:
    with FakeOpenAIServer(replies("I want to cancel an order.", "My email is a@b.co.")) as server:
        stats = SimulatorStats()
        user = user_for(server, stats)
        opening = user.opening()
        answer = user.reply(
            [
                Message(role="system", content="policy"),
                opening,
                Message(role="assistant", content="What is your email?"),
            ]
        )
        first, second = server.requests
    system = first["messages"][0]["content"]
    assert user.task.goal.instruction in system and get_persona("confused").description in system
    assert STOP in system
    assert [m["role"] for m in second["messages"]] == ["system", "user", "assistant", "user"]
    assert second["messages"][2]["content"] == "I want to cancel an order."
    assert second["messages"][3]["content"] == "What is your email?"
    assert answer.content == "My email is a@b.co." and stats.turns == 2 and stats.fault_rate == 0


def test_faults_are_detected_retried_and_counted() -> None:
    scripted = replies(
        "",  # empty
        f"Hi. {STOP}",  # stops before pursuing anything
        "Request 1: start with 'cancel'",  # leaks the instruction
        "I need to cancel an order.",
    )
    with FakeOpenAIServer(scripted) as server:
        stats = SimulatorStats()
        user = user_for(server, stats)
        user.max_attempts = 4
        assert user.opening().content == "I need to cancel an order."
    assert stats.faults == {"empty": 1, "premature_stop": 1, "leak": 1}
    assert stats.turns == 4 and stats.fault_rate == pytest.approx(0.75)


def test_a_user_that_keeps_failing_makes_the_episode_an_error() -> None:
    with FakeOpenAIServer(lambda body: {"role": "assistant", "content": ""}) as server:
        stats = SimulatorStats()
        user = user_for(server, stats)
        with pytest.raises(SimulatorFault, match="3 faulty replies"):
            user.opening()
        client = user.client

        def factory(task, persona, seed):
            return LLMUser(client, task, persona, seed, stats=stats)

        t = rollout(make("trajgym/Retail-v1", split="test", user=factory), ScriptedExpert(), seed=1)
    assert t.status == "error" and t.reward is None and t.error.startswith("user: ")
    assert stats.failed_users == 2


def test_whole_episode_with_an_llm_user() -> None:
    with FakeOpenAIServer(scripted_user_responder) as server:
        stats = SimulatorStats()
        client = LLMClient(LLMConfig(model="openai/fake", api_base=server.base_url))

        def factory(task, persona, seed):
            return LLMUser(client, task, persona, seed, stats=stats)

        env = make("trajgym/Retail-v1", split="test", user=factory)
        task = next(
            t
            for t in env.unwrapped.tasks("test")
            if t.family == "order_status" and "email" in t.goal.identity
        )
        t = rollout(env, ScriptedExpert(), seed=0, task_id=task.id)
    assert t.status == "ok" and t.termination == "user_stop"
    assert task.goal.identity["email"] in t.messages[3].content
    assert t.user_usage.prompt_tokens > 0


def test_the_scripted_user_answers_what_it_cannot_know_without_crashing() -> None:
    """At the airline desk users are known by id: asked for a name and zip code (as a
    student trained on the retail desk does), the user says it does not know."""
    from trajgym.envs import make

    env = make("trajgym/Airline-v0", split="test")
    env.reset(seed=0)
    ask = {"role": "assistant", "content": "What are your first name, last name and zip code?"}
    obs, _, terminated, truncated, _ = env.step(ask)
    assert not terminated and not truncated
    assert obs.messages[0].role == "user" and obs.messages[0].text
