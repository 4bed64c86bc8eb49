"""Retail tasks: counts, splits without shared entities, and verification that cannot be gamed."""

from __future__ import annotations

from collections import Counter

import pytest

from trajgym.agents.baselines import DoNothingAgent, RandomToolAgent
from trajgym.agents.expert import ScriptedExpert
from trajgym.envs import make
from trajgym.envs.retail.tasks import OOD_FAMILIES, make_tasks
from trajgym.envs.retail.world import make_world
from trajgym.records.schema import FunctionCall, Message, ToolCall
from trajgym.rollouts.rollout import rollout

SPLITS = ("train", "test", "ood")


def entities(split: str) -> set[str]:
    world = make_world(0)
    found: set[str] = set()
    for task in make_tasks(split):
        for action in task.gold_actions:
            for key in ("user_id", "order_id", "email"):
                if key in action.arguments:
                    found.add(str(action.arguments[key]))
        user = world.user_by_email.get(task.goal.identity.get("email", ""))
        if user:
            found.add(user)
    return found


def test_world_size_and_task_counts() -> None:
    world = make_world(0)
    assert len(world.customers) == 500 and 900 <= len(world.orders) <= 1100
    counts = {s: len(make_tasks(s)) for s in SPLITS}
    assert sum(counts.values()) >= 5000 and min(counts.values()) >= 1000
    in_dist = {t.family for t in make_tasks("train")}
    assert len(in_dist) >= 8
    assert in_dist == {t.family for t in make_tasks("test")}
    assert not in_dist & set(OOD_FAMILIES)
    assert set(OOD_FAMILIES) <= {t.family for t in make_tasks("ood")}
    assert {t.difficulty for t in make_tasks("ood")} >= {1, 2, 3, 4, 5, 6}
    assert max(len(t.gold_actions) for t in make_tasks("ood")) >= 7


def test_task_ids_unique_and_phrasings_held_out() -> None:
    for split in SPLITS:
        ids = [t.id for t in make_tasks(split)]
        assert len(ids) == len(set(ids))
    assert {t.phrasing_set for t in make_tasks("train")} == {"A"}
    assert {t.phrasing_set for t in make_tasks("ood")} == {"B"}
    train_openings = {i.request for t in make_tasks("train") for i in t.goal.intents}
    ood_openings = {i.request for t in make_tasks("ood") for i in t.goal.intents}
    assert not train_openings & ood_openings


def test_no_entity_shared_between_splits() -> None:
    train, test, ood = (entities(s) for s in SPLITS)
    assert train and test and ood
    assert not train & test and not train & ood and not test & ood


@pytest.mark.parametrize("env_id", ["trajgym/Retail-v1", "trajgym/RetailLite-v0"])
@pytest.mark.parametrize("split", SPLITS)
def test_expert_solves_every_task(env_id: str, split: str) -> None:
    env = make(env_id, split=split)
    failures = Counter()
    for i, task in enumerate(env.unwrapped.tasks(split)):
        t = rollout(env, ScriptedExpert(), seed=i, task_id=task.id)
        if not t.success:
            failures[task.family] += 1
    assert not failures, failures


@pytest.mark.parametrize("agent", [DoNothingAgent, RandomToolAgent])
def test_floor_agents_score_zero_on_200_test_tasks(agent: type) -> None:
    env = make("trajgym/Retail-v1", split="test")
    rewards = [
        rollout(env, agent(), seed=i, task_id=t.id).reward
        for i, t in enumerate(make_tasks("test")[:200])
    ]
    assert rewards == [0.0] * 200


class SkipsConfirmation(ScriptedExpert):
    """The expert, but it never waits for a 'yes' before a write."""

    def act(self, messages):  # type: ignore[no-untyped-def]
        message = super().act(messages)
        while message.content and "(yes/no)" in message.content:
            message = super().act(messages)
        return message


def test_write_without_confirmation_is_a_violation() -> None:
    env = make("trajgym/Retail-v1", split="test")
    task = next(t for t in make_tasks("test") if t.family == "cancel_pending_order")
    t = rollout(env, SkipsConfirmation(), seed=0, task_id=task.id)
    assert t.verdict is not None and t.verdict.state_match
    assert t.verdict.violations and t.reward == 0.0


def test_untold_outputs_fail_even_with_the_right_state() -> None:
    class Mute(ScriptedExpert):
        def act(self, messages):  # type: ignore[no-untyped-def]
            message = super().act(messages)
            if message.content and "refunded" in message.content:
                return Message(
                    role="assistant", content="Done. Anything else I can do for you today?"
                )
            return message

    env = make("trajgym/Retail-v1", split="test")
    task = next(t for t in make_tasks("test") if t.family == "cancel_pending_order")
    t = rollout(env, Mute(), seed=0, task_id=task.id)
    assert t.verdict is not None and t.verdict.state_match and not all(t.verdict.outputs.values())
    assert t.reward == 0.0


def test_wrong_write_fails_state_check() -> None:
    env = make("trajgym/Retail-v1", split="test")
    task = next(t for t in make_tasks("test") if t.family == "cancel_pending_order")
    wrong_reason = {
        "no longer needed": "ordered by mistake",
        "ordered by mistake": "no longer needed",
    }

    class WrongReason(ScriptedExpert):
        def act(self, messages):  # type: ignore[no-untyped-def]
            message = super().act(messages)
            calls = message.tool_calls or ()
            if calls and calls[0].function.name == "cancel_pending_order":
                args = calls[0].function.arguments
                for old, new in wrong_reason.items():
                    if old in args:
                        args = args.replace(old, new)
                        break
                call = ToolCall(
                    id=calls[0].id,
                    function=FunctionCall(name="cancel_pending_order", arguments=args),
                )
                return Message(role="assistant", tool_calls=(call,))
            return message

    t = rollout(env, WrongReason(), seed=0, task_id=task.id)
    assert t.verdict is not None and not t.verdict.state_match and t.reward == 0.0


def test_lite_is_retail_cut_down() -> None:
    """Lite shares Retail's customers and splits, holds out chained requests, and is short."""
    lite = make("trajgym/RetailLite-v0", split="ood").unwrapped
    families = {s: {t.family for t in lite.tasks(s)} for s in SPLITS}
    assert (
        families["train"]
        == families["test"]
        == {
            "order_status",
            "cancel_pending_order",
            "transfer_to_human",
        }
    )
    assert families["ood"] == families["train"] | {"multi_intent"}
    assert all(t.env_id == "trajgym/RetailLite-v0" for t in lite.tasks("ood"))
    assert len(lite.toolkit.tools) == 5 and len(lite.system_prompt) < 600
    retail_users = {
        t.goal.identity["first_name"] + t.goal.identity["zip"] for t in make_tasks("test")
    }
    lite_users = {
        t.goal.identity["first_name"] + t.goal.identity["zip"] for t in lite.tasks("test")
    }
    assert lite_users <= retail_users  # same customers, same split
    obs, info = lite.reset(seed=0)
    result = lite.step(
        Message(
            role="assistant",
            tool_calls=(
                ToolCall(
                    id="c",
                    function=FunctionCall(
                        name="get_order_details", arguments='{"order_id": "#W0"}'
                    ),
                ),
            ),
        )
    )
    assert result[0].messages[0].content.startswith("Error: Order '#W0' not found")


def test_a_fact_counts_only_after_the_tools_showed_it() -> None:
    from trajgym.envs.verify import outputs_told

    def say(role: str, text: str) -> Message:
        extra = {"tool_call_id": "c", "name": "t"} if role == "tool" else {}
        return Message(role=role, content=text, **extra)

    guess = [say("assistant", "Order #W1 is pending, refund 12.50."), say("tool", '{"total": 99}')]
    assert outputs_told(["pending", "12.5"], guess) == {"pending": False, "12.5": False}
    failed_lookup = [say("tool", "Error: Order 'pending' not found."), say("assistant", "pending")]
    assert outputs_told(["pending"], failed_lookup) == {"pending": False}
    looked_up = [
        say("tool", '{"status": "Pending", "total": 10.0}'),
        say("assistant", "It is pending; $12.5 back (the sum of two items)."),
    ]
    assert outputs_told(["pending", "12.50", "shipped"], looked_up) == {
        "pending": True,
        "12.50": True,
        "shipped": False,
    }


def test_the_expert_says_its_plan_before_asking_who_the_user_is() -> None:
    # The plan in the expert's own words is what a student trained on it carries to the
    # decision turns later (check, cancel or transfer).
    words = {
        "order_status": "order",
        "cancel_pending_order": "cancel",
        "transfer_to_human": "transfer",
    }
    env = make("trajgym/RetailLite-v0", split="train")
    seen: set[str] = set()
    for task in env.unwrapped.tasks()[:60]:  # type: ignore[attr-defined]
        if task.family in seen:
            continue
        seen.add(task.family)
        trajectory = rollout(env, ScriptedExpert(), seed=0, task_id=task.id)
        first = next(m for m in trajectory.messages if m.role == "assistant")
        plan = first.text.split("?")[0].lower()
        assert words[task.family] in plan.split(".")[0], (task.family, first.text)
        assert trajectory.reward == 1.0
    assert seen == set(words)
