"""The records that cross module boundaries: messages, tasks, verdicts, trajectories.

Messages follow the OpenAI chat format (assistant ``tool_calls``, ``tool`` messages with
``tool_call_id``) so that a trajectory can be fed to any trainer without conversion.
Every model is frozen; a change to a field's meaning bumps ``SCHEMA_VERSION``.
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

SCHEMA_VERSION = 1  # the default of Trajectory.schema_version

Role = Literal["system", "user", "assistant", "tool"]


class Frozen(BaseModel):
    """Base for immutable records that reject unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class FunctionCall(Frozen):
    """The function half of a tool call; ``arguments`` is the raw JSON text the model wrote."""

    name: str
    arguments: str = "{}"


class ToolCall(Frozen):
    """One tool call inside an assistant message."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class Message(Frozen):
    """A chat message in OpenAI format."""

    role: Role
    content: str | None = None
    tool_calls: tuple[ToolCall, ...] | None = None
    tool_call_id: str | None = Field(default=None, description="For role=tool: the call answered.")
    name: str | None = Field(default=None, description="For role=tool: the tool's name.")
    plan: str | None = Field(
        default=None,
        description="For role=assistant: the leading sentences of content that say what the "
        "agent will do and why (content is the plan, or the plan, a space and the rest). "
        "Already in content, so left out of to_openai; it marks what strip_rationale removes.",
    )

    @model_validator(mode="after")
    def _plan_leads_content(self) -> Message:
        """A plan opens an assistant message and comes before something: words or a call."""
        if self.plan is None:
            return self
        content = self.content or ""
        leads = bool(self.plan) and (content == self.plan or content.startswith(self.plan + " "))
        if self.role != "assistant" or not leads or (content == self.plan and not self.tool_calls):
            raise ValueError(
                "plan must be the start of an assistant message's content (followed by a space "
                "and more words, or all of it when the message makes a tool call)"
            )
        return self

    def to_openai(self) -> dict[str, Any]:
        """Return the plain dict an OpenAI-compatible API expects."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"plan"})

    @property
    def text(self) -> str:
        """The message content, or an empty string."""
        return self.content or ""


class Action(Frozen):
    """A gold tool call: what an expert would do, with parsed arguments."""

    name: str
    arguments: dict[str, JsonValue] = Field(default_factory=dict)


class Intent(Frozen):
    """One thing the user wants within a task, with the expert's way of doing it."""

    kind: str = Field(description="Task family of this intent, e.g. 'cancel_pending_order'.")
    request: str = Field(description="The user's opening words for this intent.")
    slots: dict[str, str] = Field(
        default_factory=dict, description="Facts the user gives when asked (slot -> value)."
    )
    actions: tuple[Action, ...] = Field(default=(), description="Gold tool calls, in order.")
    outputs: tuple[str, ...] = Field(default=(), description="Facts the agent must tell the user.")


class UserGoal(Frozen):
    """The simulated user's hidden goal: what they know, want, and keep to themselves."""

    identity: dict[str, str] = Field(description="Facts that identify the user (email, name, zip).")
    intents: tuple[Intent, ...]
    withhold: tuple[str, ...] = Field(
        default=(), description="Slots never volunteered, only given when asked."
    )
    instruction: str = Field(description="The goal in prose, for an LLM-driven user.")


Split = Literal["train", "test", "ood"]
"""The three task splits; they share no entity (customer, order, payment method...)."""
SPLITS: tuple[Split, ...] = get_args(Split)


class Task(Frozen):
    """A procedurally generated task with its ground truth."""

    id: str
    env_id: str
    split: Split
    family: str
    difficulty: int = Field(ge=1, le=10)
    goal: UserGoal
    auth_actions: tuple[Action, ...] = Field(default=(), description="Gold authentication calls.")
    phrasing_set: str = "A"

    @property
    def gold_actions(self) -> tuple[Action, ...]:
        """All gold tool calls in the order an expert makes them."""
        return self.auth_actions + tuple(a for i in self.goal.intents for a in i.actions)

    @property
    def required_outputs(self) -> tuple[str, ...]:
        """Every fact the agent must have told the user."""
        return tuple(o for i in self.goal.intents for o in i.outputs)


MAX_CHANGE_CHARS = 2_000  # of one StateChange value or diff: a verdict stays small


class StateChange(Frozen):
    """One thing an episode changed in its environment's state: a record or a file.

    Values longer than ``MAX_CHANGE_CHARS`` (as JSON) are cut to a string preview, so a
    verdict stays a few kilobytes whatever the episode did.
    """

    path: str = Field(description="What changed, e.g. 'orders/#W2378156' or 'files/src/app.py'.")
    kind: Literal["added", "modified", "deleted", "omitted"] = Field(
        description="'omitted' stands for changes left out past the limit (path says how many)."
    )
    before: JsonValue = Field(
        None, description="The old value; of a modified record, only the fields that changed."
    )
    after: JsonValue = Field(None, description="The new value, in the same form as ``before``.")
    diff: str = Field("", description="For a text file, a unified diff.")

    @field_validator("before", "after")
    @classmethod
    def _bounded(cls, value: JsonValue) -> JsonValue:
        if value is None or isinstance(value, bool | int | float):
            return value
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return value if len(text) <= MAX_CHANGE_CHARS else _cut(text)

    @field_validator("diff")
    @classmethod
    def _bounded_diff(cls, value: str) -> str:
        return _cut(value)


def _cut(text: str) -> str:
    """``text`` within ``MAX_CHANGE_CHARS``, saying how long it was (idempotent: reloads agree)."""
    if len(text) <= MAX_CHANGE_CHARS:
        return text
    marker = f"\n... [{len(text)} characters]"
    return text[: MAX_CHANGE_CHARS - len(marker)] + marker


class Verdict(Frozen):
    """The environment's verification of an episode's final state and transcript."""

    reward: float
    state_match: bool
    outputs: dict[str, bool] = Field(default_factory=dict)
    violations: tuple[str, ...] = ()
    checks: dict[str, bool] = Field(
        default_factory=dict, description="Domain checks run on the final state (e.g. tests)."
    )
    final_state_hash: str = ""
    gold_state_hash: str = ""
    changes: tuple[StateChange, ...] = Field(
        (), description="What the episode changed in the state, in a fixed order (bounded)."
    )


class Finding(Frozen):
    """A judge's finding on one rubric criterion."""

    criterion: str = Field(description="Rubric criterion, e.g. 'goal', 'policy', 'truthful'.")
    passed: bool
    note: str = Field("", description="Why, in a sentence.")


class JudgeVerdict(Frozen):
    """A judge's grade of a whole trajectory against the rubric.

    ``status="error"`` means the judge could not grade it (its calls failed after retries,
    or it never answered in the schema): the trajectory is then excluded, never failed.
    """

    status: Literal["ok", "error"] = "ok"
    passed: bool | None = Field(None, description="Pass / fail; None when status is 'error'.")
    score: float | None = Field(None, ge=0.0, le=1.0, description="0..1; None on error.")
    findings: tuple[Finding, ...] = ()
    rationale: str = ""
    error: str | None = Field(None, description="Why the judge could not grade (status error).")
    judge: str = Field(description="'embedded' or the litellm model that graded.")
    prompt_hash: str = Field(description="sha256 of the judge's instructions (rubric + format).")
    usage: Usage = Field(default_factory=lambda: Usage(), description="What grading cost.")


class TeacherLabel(Frozen):
    """On-policy distillation: the teacher's action at a state the student reached."""

    index: int = Field(ge=0, description="Index in messages of the student's assistant turn.")
    message: Message = Field(description="What the teacher would have said or called there.")


class Provenance(Frozen):
    """Who produced a trajectory, and how."""

    kind: Literal["expert", "teacher", "student", "self", "on_policy_teacher", "baseline"]
    agent: str = Field(description="Agent class or name, e.g. 'ScriptedExpert'.")
    model: str | None = None
    decoding: dict[str, JsonValue] = Field(default_factory=dict)
    edits: tuple[str, ...] = Field(
        (),
        description="What was done to the messages after the episode was played, in order, "
        "e.g. 'strip_rationale': they are then no longer exactly the agent's.",
    )


class StepTiming(Frozen):
    """Wall-clock seconds spent by the agent and by the environment in one step."""

    agent_s: float
    env_s: float


class Usage(Frozen):
    """Tokens and money an episode cost."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )


Termination = Literal["user_stop", "transfer", "truncated", "error"]


class Trajectory(Frozen):
    """One episode: the conversation, its provenance and how it was judged."""

    schema_version: Literal[1] = 1
    env_id: str
    env_version: int
    task_id: str
    split: str
    family: str
    seed: int
    persona: str
    sample_index: int = 0
    messages: tuple[Message, ...]
    tools: tuple[dict[str, JsonValue], ...] = ()
    reward: float | None = None
    verdict: Verdict | None = None
    status: Literal["ok", "error"] = "ok"
    error: str | None = None
    termination: Termination
    provenance: Provenance
    timings: tuple[StepTiming, ...] = ()
    usage: Usage = Field(default_factory=Usage, description="What the agent's calls cost.")
    user_usage: Usage = Field(default_factory=Usage, description="What the simulated user cost.")
    judge: JudgeVerdict | None = Field(None, description="The judge's grade, once judged.")
    labels: tuple[TeacherLabel, ...] = Field(
        (), description="Teacher actions at the student's states (provenance on_policy_teacher)."
    )

    @property
    def key(self) -> tuple[str, str, int]:
        """The identity of an episode in a store: (env, task, sample)."""
        return (self.env_id, self.task_id, self.sample_index)

    @property
    def success(self) -> bool:
        """Whether the episode ran and was verified fully successful."""
        return self.status == "ok" and self.reward == 1.0
