"""`trajgym synthesize`: blueprints from a (fake) LLM, each accepted only by execution."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from trajgym.agents.expert import ScriptedExpert
from trajgym.envs import tool_env
from trajgym.envs.retail.lite import RetailLiteEnv
from trajgym.llm.client import LLMConfig
from trajgym.records.schema import Task
from trajgym.rollouts.blueprints import Blueprint, Checker, blueprint_of
from trajgym.rollouts.rollout import rollout
from trajgym.rollouts.synthesis import SynthesisConfig, parse_blueprint, synthesize
from trajgym.testing.fake_openai import FakeOpenAIServer
from trajgym.tools import Toolkit, tool

LITE = "trajgym/RetailLite-v0"


def _first(env, family: str, split: str = "train") -> Task:
    return next(t for t in env.tasks(split) if t.family == family and len(t.goal.intents) == 1)


def _novel(env) -> dict[str, Any]:
    """A valid blueprint no task has: a train user asks the status of two of their orders."""
    for task in env.tasks("train"):
        if task.family != "order_status" or len(task.goal.intents) != 1:
            continue
        state = env.new_state(task)
        auth = task.auth_actions[0]
        user_id = env.toolkit.tools[auth.name](state, **auth.arguments)
        orders = env.world.customers[user_id].orders
        if len(orders) < 2:
            continue
        bp = blueprint_of(task)
        first = bp["intents"][0]
        second = copy.deepcopy(first)
        other = next(o for o in orders if o != first["slots"]["order_id"])
        second.update(
            request=f"And what about order {other}?",
            slots={"order_id": other},
            actions=[{"name": "get_order_details", "arguments": {"order_id": other}}],
            outputs=[env.world.orders[other].status],
        )
        bp["intents"].append(second)
        return bp
    raise AssertionError("no train user with two orders")


class Script:
    """Replies in order, and keeps each request (to see the feedback the model got)."""

    def __init__(self, replies: list[str]) -> None:
        self.replies, self.requests = list(replies), []

    def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(request)
        return {"role": "assistant", "content": self.replies.pop(0)}


def _run(tmp_path: Path, replies: list[str], retries: int = 0, **kw) -> tuple:
    script = Script(replies)
    with FakeOpenAIServer(script) as server:
        config = SynthesisConfig(
            env=LITE, split="train", n=len(replies) // (1 + retries), max_retries=retries,
            llm=LLMConfig(model="openai/fake", api_base=server.base_url, max_attempts=1),
            output=tmp_path / "synth.jsonl", families=["order_status"], **kw,
        )  # fmt: skip
        return synthesize(config), script


def test_each_kind_of_invalid_blueprint_is_rejected_with_its_reason(tmp_path: Path) -> None:
    env = tool_env(LITE, split="train")
    cancel = blueprint_of(_first(env, "cancel_pending_order"))
    unknown = copy.deepcopy(cancel) | {"family": "refund_everything"}
    other_split = blueprint_of(_first(env, "order_status", split="test"))
    no_auth = copy.deepcopy(cancel) | {"auth_actions": []}
    bad_call = copy.deepcopy(cancel)
    bad_call["intents"][0]["actions"][0]["arguments"]["order_id"] = "#W0000000"
    valid = _novel(env)
    unshown = copy.deepcopy(valid)
    unshown["intents"][1]["outputs"] = ["a free banana"]
    no_slot = copy.deepcopy(valid)
    no_slot["intents"][1]["slots"] = {}  # the expert needs the order id as a fact of the user's
    replies = [
        "Here you go: {not json}",
        json.dumps({"family": "order_status"}),
        json.dumps(unknown),
        json.dumps(other_split),
        json.dumps(cancel),  # an existing task's
        json.dumps(no_auth),
        json.dumps(bad_call),
        json.dumps(unshown),
        json.dumps(no_slot),
        f"```json\n{json.dumps(valid)}\n```",
    ]
    report, _ = _run(tmp_path, replies)
    assert report.proposals == 10 and report.accepted == 1 and report.acceptance_rate == 0.1
    assert report.rejections == {
        "malformed": 2, "unknown_family": 1, "other_split": 1, "duplicate": 1, "policy": 1,
        "tool_error": 1, "output_not_shown": 1, "expert_fails": 1,
    }  # fmt: skip
    reasons = "\n".join(report.reasons)
    for expected in (
        "not JSON", "identity: Field required", "unknown families ['refund_everything']",
        "no user of split train", "the same user and gold calls as task train-cancel",
        "cancel_pending_order changes the state of an unidentified user", "not found",
        "outputs ['a free banana'] appear in no tool result", "expert",
    ):  # fmt: skip
        assert expected in reasons, (expected, reasons)
    saved = json.loads((tmp_path / "synth.report.json").read_text())
    assert saved["accepted"] == 1 and saved["rejections"]["malformed"] == 2


def test_a_rejected_blueprint_is_retried_with_its_reason_and_accepted_tasks_play(tmp_path):
    env = tool_env(LITE, split="train")
    replies = ["no json here", json.dumps(_novel(env))]
    report, script = _run(tmp_path, replies, retries=1)
    assert report.accepted == 1 and report.proposals == 2
    feedback = script.requests[1]["messages"][-1]["content"]
    assert feedback.startswith("Rejected (malformed): no JSON object in the reply")
    prompt = script.requests[0]["messages"]
    assert "# Policy" in prompt[0]["content"] and "get_order_details" in prompt[0]["content"]
    assert "The records of this user" in prompt[1]["content"] and "orders" in prompt[1]["content"]
    # The task file plays like built-in tasks: the scripted user and expert, verified.
    played = tool_env(LITE, split="train", tasks=tmp_path / "synth.jsonl")
    (task,) = played.tasks()
    t = rollout(played, ScriptedExpert(), seed=0, task_id=task.id)
    assert t.reward == 1.0 and t.env_id == "trajgym/RetailLite.synth-v0"


def test_a_reviewer_has_the_last_word(tmp_path: Path) -> None:
    env = tool_env(LITE, split="train")
    with FakeOpenAIServer(Script(["REJECT: nobody asks about two orders at once"])) as reviewer:
        report, _ = _run(
            tmp_path, [json.dumps(_novel(env))],
            reviewer=LLMConfig(model="openai/fake", api_base=reviewer.base_url, max_attempts=1),
        )  # fmt: skip
    assert report.accepted == 0 and report.rejections == {"reviewer": 1}
    assert "nobody asks about two orders" in report.reasons[0]


def test_a_write_that_changes_nothing_is_rejected(tmp_path: Path) -> None:
    env = tool_env("trajgym/Retail-v1", split="train")
    task = _first(env, "update_default_address")
    bp = blueprint_of(task)
    state = env.new_state(task)
    auth = task.auth_actions[0]
    user = env.world.customers[env.toolkit.tools[auth.name](state, **auth.arguments)]
    same = user.address.model_dump(exclude={"state"}) | {"state_code": user.address.state}
    bp["intents"][0]["actions"][1]["arguments"] = {"user_id": user.user_id, **same}
    verdict = Checker.of(env, "train").check(Blueprint.model_validate(bp), "synth-0")
    assert verdict.reason_kind == "write_no_change", verdict


def test_a_read_that_changes_the_state_is_rejected() -> None:
    base = RetailLiteEnv.toolkit.tools

    @tool
    def get_order_details(state, order_id: str) -> str:
        """A buggy read: it cancels what it reads."""
        order = state.order(order_id)
        state.store.tables["orders"].put(
            order.order_id, order.model_copy(update={"status": "cancelled"})
        )
        return str(order.status)

    class Buggy(RetailLiteEnv):
        toolkit = Toolkit(
            [t for n, t in base.items() if n != "get_order_details"] + [get_order_details]
        )

    env = Buggy(split="train")
    verdict = Checker.of(env, "train").check(Blueprint.model_validate(_novel(env)), "synth-0")
    assert verdict.reason_kind == "read_changed_state", verdict


def test_a_reply_is_parsed_fenced_or_bare() -> None:
    bp = {"family": "f", "identity": {"a": "b"}, "intents": [{"kind": "f", "request": "r"}]}
    assert parse_blueprint(f"Sure:\n```json\n{json.dumps(bp)}\n```")[0] is not None
    assert parse_blueprint(f"prefix {json.dumps(bp)} suffix")[0] is not None
    assert parse_blueprint("[]")[1] == "no JSON object in the reply"


@pytest.mark.parametrize("env_id", ["trajgym/Workspace-v0"])
def test_a_domain_without_task_files_cannot_synthesize(env_id: str, tmp_path: Path) -> None:
    from trajgym.errors import ConfigError

    config = SynthesisConfig(env=env_id, llm=LLMConfig(model="openai/x"), output=tmp_path / "t")
    with pytest.raises(ConfigError, match="cannot play tasks from a file"):
        synthesize(config)


def test_the_verb_writes_the_tasks_and_says_what_it_kept(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trajgym.cli import app

    env = tool_env(LITE, split="train")
    script = Script([json.dumps(_novel(env)), "not a blueprint"])
    out = tmp_path / "t.jsonl"
    with FakeOpenAIServer(script) as server:
        args = ["synthesize", LITE, "--model", "openai/fake", "--api-base", server.base_url,
                "-n", "2", "--max-retries", "0", "-o", str(out)]  # fmt: skip
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 1
    assert json.loads(out.with_suffix(".report.json").read_text())["accepted"] == 1
    assert "acceptance_rate" in result.output and "0.5" in result.output
