"""Any trajgym environment as TRL's ``environment_factory``, for ``GRPOTrainer``.

TRL (>= 1.16, with transformers >= 5.2; see ``GRPOTrainer.__init__``) builds one environment
instance per rollout from a no-argument callable, calls ``reset(**row)`` with the dataset row
and appends the string it returns to the prompt's last user message, exposes every public
method but ``reset`` and ``get_reward`` as a tool (schema from type hints and the Google
docstring), runs the tool calls it parses from each completion, appends the results as
``tool`` messages and generates again until a completion has no tool call, then scores the
rollout with ``get_reward()``. Here:

- :func:`environment_factory` returns such a class for one environment id: ``reset`` starts
  the trajgym episode of the row's ``task_id`` (and ``seed``, ``persona``) and returns the
  user's opening words; each trajgym tool is a method whose call goes through ``env.step``
  as an assistant tool call (a bad argument comes back as trajgym's ``Error: ...`` text);
  ``get_reward`` is trajgym's verified reward.
- The simulated user speaks through the ``send_message`` tool: its argument is the
  assistant's message to the user (a plain-text ``env.step``), its result the user's reply.
  Authentication, confirmations and reports happen inside TRL's tool loop, and what the
  agent says through it counts for the required-output and confirmation checks.
- :func:`trl_dataset` turns a split's tasks into TRL rows: a conversational ``prompt`` (the
  system prompt, which says how to talk to the user, and an empty user turn the opening is
  appended to), ``task_id`` and ``seed``.
- :func:`prepare_tokenizer` gives a tokenizer trajgym's chat template and the
  ``response_template`` that parses its ``<tool_call>`` JSON: TRL only knows the response
  formats of a few model families and refuses any other template.

What TRL's loop cannot do that ``trajgym train rl`` does:

- The user's words come back as a tool result (``<tool_response>`` inside a user turn), not
  as a user turn; a model trained this way talks to users through ``send_message``, so run
  it with this wrapper, not with trajgym's plain-text agents. TRL does mask those tokens
  from the loss (``tool_mask`` is 0 on every tool result and ``loss_mask = completion_mask
  * tool_mask``), as trajgym does, but they count toward ``max_completion_length``: a tool
  result that would overflow it is dropped and the rollout ends there.
- A rollout ends at the first completion without a tool call; that text reaches neither the
  user nor the verifier, and neither does text written beside a tool call (a method sees
  only its arguments). A malformed tool call is parsed as plain text and so ends the
  rollout, where trajgym answers it with an error and the episode goes on.
- An episode TRL ends before the user or a transfer does is verified as it stands when
  ``get_reward`` is called; one that hit the environment's step limit scores 0 (as
  trajgym's truncation does). A simulated user or sandbox that fails (an
  ``InfrastructureError``) makes ``get_reward`` return ``None``: TRL then leaves the rollout
  out of its group's baseline and gives it no advantage, never a 0 reward.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

import gymnasium
from pydantic import BaseModel, TypeAdapter

from trajgym.agents.tool_text import chat_template
from trajgym.envs import make, tool_env
from trajgym.envs.base import ToolEnv
from trajgym.envs.users.base import STOP, UserFactory
from trajgym.errors import ConfigError, InfrastructureError
from trajgym.records.schema import FunctionCall, Message, Split, ToolCall, Verdict
from trajgym.tools import Tool

__all__ = [
    "MESSAGE_TOOL",
    "RESPONSE_TEMPLATE",
    "TrajgymEnvironment",
    "environment_factory",
    "prepare_tokenizer",
    "trl_dataset",
]

MESSAGE_TOOL = "send_message"
MESSAGE_TOOL_PROMPT = (
    f"You talk with the user only through the `{MESSAGE_TOOL}` tool: its argument is your "
    "message to the user, its result is the user's reply. An answer without a tool call ends "
    "the conversation, and the user never sees it."
)
ENDED = "[The conversation is over: end your turn without calling a tool.]"
OVER = "Error: the conversation is over: end your turn without calling a tool."
STEP_LIMIT = "[The conversation reached its step limit and is over.]"
RETURNS = 'The tool\'s result, or what was wrong with the call (text starting "Error:").'

# Parses what trajgym's chat template (agents/templates/chatml_tools.jinja) renders for an
# assistant turn: text, then <tool_call>{"name": ..., "arguments": {...}}</tool_call> blocks,
# then <|im_end|>. transformers' new-style response template (>= 5.13).
RESPONSE_TEMPLATE: dict[str, Any] = {
    "defaults": {"role": "assistant"},
    "start_anchor": "<|im_start|>assistant\n",
    "fields": {
        "tool_calls": {
            "open": "<tool_call>",
            "close_pattern": r"</tool_call>\s*",
            "repeats": True,
            "content": "json",
            "transform": {"type": "function", "function": "{content}"},
        },
        "content": {"close_pattern": r"<\|im_end\|>\s*", "content": "text"},
    },
}

Status = Literal["idle", "open", "ended", "truncated", "error"]


class TrajgymEnvironment:
    """One rollout in a trajgym environment, shaped as TRL's ``environment_factory`` wants.

    Subclasses made by :func:`environment_factory` add one method per trajgym tool. Every
    other public name here is a property (TRL takes each public function for a tool).
    """

    env_id: ClassVar[str]
    make_kwargs: ClassVar[dict[str, Any]]

    def __init__(self) -> None:
        self._env: gymnasium.Env[Any, Any] = make(self.env_id, **self.make_kwargs)
        base = self._env.unwrapped
        assert isinstance(base, ToolEnv), f"{self.env_id} is not a trajgym ToolEnv"
        self._base: ToolEnv[Any] = base
        self._status: Status = "idle"
        self._verdict: Verdict | None = None
        self._error: str | None = None
        self._calls = 0
        # Sandboxes must not outlive a dropped instance; the finalizer holds the env, not self.
        weakref.finalize(self, self._env.close)

    @property
    def env(self) -> ToolEnv[Any]:
        """The trajgym environment of this rollout (its transcript, state and task)."""
        return self._base

    @property
    def verdict(self) -> Verdict | None:
        """The episode's verdict once it ended or was scored, else None."""
        return self._verdict

    @property
    def error(self) -> str | None:
        """Why the episode failed (simulated user or sandbox), else None."""
        return self._error

    def reset(
        self,
        task_id: str | None = None,
        seed: int | None = None,
        persona: str | None = None,
        **_: Any,
    ) -> str:
        """Start the episode of a dataset row; return the user's opening words.

        Args:
            task_id: The task to play (default: one drawn with ``seed``).
            seed: Seeds the persona and the simulated user (same seed, same user).
            persona: The user's persona (default: one drawn with ``seed``).
            **_: The row's other columns (``prompt`` and the like), ignored.
        """
        self._finish()
        self._verdict, self._error, self._calls = None, None, 0
        self._status = "open"  # from here on, what the reset makes is released by _finish
        options = {k: v for k, v in {"task_id": task_id, "persona": persona}.items() if v}
        try:
            obs, _info = self._env.reset(seed=seed, options=options)
        except InfrastructureError as e:
            self._fail(f"user: {e}")
            return "(The user could not start the conversation.)"
        except Exception:
            self._finish("idle")  # a bad row (an unknown task, say): nothing to score
            raise
        return "\n".join(m.text for m in obs.messages)

    def send_message(self, message: str) -> str:
        """Send a message to the user and wait for their reply.

        Args:
            message: What you say to the user.

        Returns:
            The user's reply.
        """
        return self._step(Message(role="assistant", content=message))

    def get_reward(self) -> float | None:
        """The verified reward; None when the episode failed (TRL then leaves it out)."""
        if self._status == "idle":
            raise ConfigError(f"{type(self).__name__}: call reset(**row) before get_reward().")
        if self._status == "open":
            try:
                self._verdict = self._base.verify()
            except InfrastructureError as e:
                self._fail(f"verify: {e}")
            self._finish()
        if self._status == "error":
            return None
        return self._verdict.reward if self._verdict else 0.0

    def _call_tool(self, name: str, arguments: dict[str, Any]) -> str:
        self._calls += 1
        text = json.dumps(arguments, ensure_ascii=False, default=str)
        call = ToolCall(id=f"call_{self._calls}", function=FunctionCall(name=name, arguments=text))
        return self._step(Message(role="assistant", tool_calls=(call,)))

    def _step(self, message: Message) -> str:
        if self._status != "open":
            return OVER
        try:
            obs, _, terminated, truncated, info = self._env.step(message)
        except InfrastructureError as e:
            self._fail(str(e))
            return f"Error: {e}. {ENDED}"
        text = "\n".join(m.text for m in obs.messages)
        if terminated:
            self._verdict = info["verdict"]
            self._finish("ended")
            return f"{text.replace(STOP, '').strip()}\n\n{ENDED}".lstrip()
        if truncated:
            self._finish("truncated")
            return f"{text}\n\n{STEP_LIMIT} {ENDED}"
        return text

    def _fail(self, error: str) -> None:
        self._error = error
        self._finish("error")

    def _finish(self, status: Status = "ended") -> None:
        """Release what an open episode holds (its sandbox), once."""
        if self._status == "open":
            self._base.end_episode()
            self._status = status


def environment_factory(
    env_id: str,
    split: Split = "train",
    user: UserFactory | str = "scripted",
    *,
    persona: str | None = None,
    tasks: str | Path | None = None,
    max_episode_steps: int | None = None,
) -> type[TrajgymEnvironment]:
    """A class to pass as ``GRPOTrainer(environment_factory=...)``: one instance a rollout.

    Args:
        env_id: A trajgym environment id, e.g. ``trajgym/RetailLite-v0``.
        split: The split whose tasks rows may name.
        user: The simulated user: ``"scripted"`` or a user factory (an LLM user, say).
        persona: One persona for every episode (default: drawn with each row's seed).
        tasks: A task file to play instead of the domain's own tasks.
        max_episode_steps: The episode's step limit (default: the registered one).
    """
    options = {"persona": persona, "tasks": tasks, "max_episode_steps": max_episode_steps}
    make_kwargs: dict[str, Any] = {"split": split, "user": user}
    make_kwargs |= {k: v for k, v in options.items() if v is not None}
    probe = tool_env(env_id, **make_kwargs)  # fails now on a bad id, split, persona or file
    toolkit = probe.toolkit
    probe.close()
    taken = {n for n in dir(TrajgymEnvironment) if not n.startswith("_")} | {MESSAGE_TOOL}
    if clash := sorted(taken & set(toolkit.tools)):
        raise ConfigError(f"{env_id} has tools named {clash}: names the TRL wrapper uses.")
    namespace: dict[str, Any] = {name: _tool_method(t) for name, t in toolkit.tools.items()}
    namespace |= {
        "env_id": env_id,
        "make_kwargs": make_kwargs,
        "__module__": __name__,
        "__doc__": f"One rollout of {env_id} ({split} split) for TRL's GRPOTrainer.",
    }
    return type(re.sub(r"\W", "_", env_id), (TrajgymEnvironment,), namespace)


def _tool_method(tool: Tool[Any]) -> Callable[..., str]:
    """A method that runs ``tool`` through the episode, typed and documented for TRL.

    transformers builds the tool's schema from the signature and Google docstring
    (``get_json_schema``): keyword-only parameters typed like the tool's arguments (a
    nested model becomes ``dict``, its schema said in the description), one ``Args:`` line
    each. The method takes any keywords: trajgym's validation, not Python's, says what
    was wrong, as an error the model reads.
    """
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    annotations: dict[str, Any] = {"return": str}
    lines = []
    for name, field in tool.args_model.model_fields.items():
        hint = _plain_hint(field.annotation)
        default = inspect.Parameter.empty if field.is_required() else field.get_default()
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default))
        annotations[name] = hint
        lines.append(f"    {name}: {_describe(name, field.description, field.annotation)}")
    args = "\n\nArgs:\n" + "\n".join(lines) if lines else ""
    tool_name = tool.name

    def method(self: TrajgymEnvironment, **arguments: Any) -> str:
        return self._call_tool(tool_name, arguments)

    method.__name__ = method.__qualname__ = tool_name
    method.__doc__ = f"{tool.description}{args}\n\nReturns:\n    {RETURNS}\n"
    method.__annotations__ = annotations
    method.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [p.replace(annotation=annotations.get(p.name, p.annotation)) for p in params],
        return_annotation=str,
    )
    return method


def _describe(name: str, description: str | None, annotation: Any) -> str:
    text = " ".join((description or f"The {name.replace('_', ' ')}.").split())
    if _plain_hint(annotation) is not annotation:  # a nested model: its shape is only said here
        schema = TypeAdapter(annotation).json_schema()
        text += f" JSON schema: {json.dumps(schema, separators=(',', ':'))}"
    return text


def _plain_hint(hint: Any) -> Any:
    """``hint`` with pydantic models replaced by ``dict[str, Any]`` (all transformers reads)."""
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return dict[str, Any]
    origin, args = get_origin(hint), get_args(hint)
    if not args or origin is Literal:
        return hint
    plain = tuple(_plain_hint(a) for a in args)
    if plain == args:
        return hint
    if origin is Union or origin is types.UnionType:
        return Union[plain]  # noqa: UP007 (a runtime union of computed types)
    return origin[plain]


def trl_dataset(
    env_id: str,
    split: Split = "train",
    *,
    num_tasks: int | None = None,
    seed: int = 0,
    tasks: str | Path | None = None,
    environment: str | None = None,
) -> Any:
    """A split's tasks as GRPOTrainer's ``train_dataset`` (a ``datasets.Dataset``).

    Each row's ``prompt`` is the system prompt (with how to talk to the user) and an empty
    user turn, to which TRL appends what ``reset`` returns (the user's opening words);
    ``task_id`` and ``seed`` go to ``reset(**row)``. TRL repeats each row for its group, so
    a group plays one task with one user.

    Args:
        env_id: A trajgym environment id.
        split: The split whose tasks to list, in their fixed order.
        num_tasks: Keep the first ``num_tasks`` tasks (default: all of them).
        seed: The first row's seed; row ``i`` gets ``seed + i``.
        tasks: A task file to play instead of the domain's own tasks.
        environment: Adds an ``environment`` column with this name, for a dict of factories.
    """
    from datasets import Dataset

    env = tool_env(env_id, split=split, **({"tasks": tasks} if tasks is not None else {}))
    try:
        chosen = list(env.tasks())[:num_tasks]
        system = f"{env.system_prompt.rstrip()}\n\n{MESSAGE_TOOL_PROMPT}"
    finally:
        env.close()
    if not chosen:
        raise ConfigError(f"{env_id} has no task in split '{split}'.")
    prompt = [{"role": "system", "content": system}, {"role": "user", "content": ""}]
    rows: dict[str, list[Any]] = {
        "prompt": [prompt] * len(chosen),
        "task_id": [t.id for t in chosen],
        "seed": [seed + i for i in range(len(chosen))],
    }
    if environment is not None:
        rows["environment"] = [environment] * len(chosen)
    return Dataset.from_dict(rows)


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Give ``tokenizer`` trajgym's chat template and a response template that parses it.

    TRL parses tool calls with ``tokenizer.parse_response``, which needs a
    ``response_template``; TRL's ``add_response_schema`` only knows a few model families'
    templates and raises on trajgym's. Returns the same tokenizer.
    """
    tokenizer.chat_template = chat_template()
    tokenizer.response_template = RESPONSE_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
