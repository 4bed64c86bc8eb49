"""LLM task synthesis: blueprints proposed from the world, kept only if execution says so.

For each task wanted, an LLM sees the policy, the tool schemas, one existing task of the
split as an example blueprint, and the records of that task's user; it proposes a blueprint
of a given family for that user. :mod:`.blueprints` checks it by execution; a rejected
blueprint's reason goes back to the model, which tries again a bounded number of times.
An optional LLM reviewer has the last word. Accepted tasks are written as a task file
(``make(env, tasks=...)`` plays them, verified like built-in ones), and a report says how
many were proposed and accepted, and why the rest were rejected.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trajgym.envs import tool_env
from trajgym.envs.base import ToolEnv
from trajgym.errors import ConfigError, ProviderError
from trajgym.llm.client import LLMClient, LLMConfig
from trajgym.records.schema import Split, Task
from trajgym.rollouts.blueprints import Blueprint, Checker, Verdict, blueprint_of, tally

RECORDS_PER_TABLE = 6  # of the example user's, shown to the proposer
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


class SynthesisConfig(BaseModel):
    """A synthesis run."""

    model_config = ConfigDict(extra="forbid")

    env: str = Field(description="The environment whose tasks to synthesize.")
    split: Split = Field("train", description="Their split (their users are the split's).")
    n: int = Field(20, ge=1, description="Blueprints asked for (each retried on rejection).")
    llm: LLMConfig = Field(description="The proposer.")
    reviewer: LLMConfig | None = Field(None, description="An LLM that approves each accepted.")
    max_retries: int = Field(2, ge=0, description="Corrections asked for per blueprint.")
    families: list[str] | None = Field(None, description="Families to ask for (default: all).")
    seed: int = Field(0, description="Which example tasks and families, in which order.")
    output: Path = Field(Path("runs/synth/tasks.jsonl"), description="The task file written.")


@dataclass
class SynthesisReport:
    """What a run proposed, accepted and rejected (provider failures counted apart)."""

    asked: int = 0
    proposals: int = 0
    accepted: int = 0
    provider_errors: int = 0
    rejections: dict[str, int] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)  # every rejection, in order

    @property
    def acceptance_rate(self) -> float:
        """Accepted tasks per blueprint asked for."""
        return self.accepted / self.asked if self.asked else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-able data."""
        return {
            "asked": self.asked,
            "proposals": self.proposals,
            "accepted": self.accepted,
            "acceptance_rate": round(self.acceptance_rate, 4),
            "provider_errors": self.provider_errors,
            "rejections": self.rejections,
            "reasons": self.reasons,
        }


def synthesize(
    config: SynthesisConfig, on_blueprint: Callable[[SynthesisReport], None] | None = None
) -> SynthesisReport:
    """Run the synthesis; writes the accepted tasks and ``<output>.report.json``.

    ``on_blueprint`` sees the report, counted so far, after each blueprint (a progress bar).
    """
    env = tool_env(config.env, split=config.split)
    if not env.accepts_task_files:
        raise ConfigError(f"{config.env} cannot play tasks from a file, so none are synthesized.")
    checker = Checker.of(env, config.split)
    anchors = [t for t in checker.anchors if len(t.goal.intents) == 1]
    families = config.families or sorted({t.family for t in anchors})
    proposer = LLMClient(config.llm)
    reviewer = LLMClient(config.reviewer) if config.reviewer else None
    rng = random.Random(config.seed)
    report, accepted = SynthesisReport(asked=config.n), []
    for n in range(config.n):
        family = families[n % len(families)]
        anchor = rng.choice([t for t in anchors if t.family == family] or anchors)
        messages = _prompt(env, anchor, family)
        verdicts: list[Verdict] = []
        for _ in range(1 + config.max_retries):
            try:
                reply = proposer.complete(messages).message.text
            except ProviderError:
                report.provider_errors += 1
                break
            report.proposals += 1
            verdict = _judged(checker, reply, f"synth-{config.split}-{n:05d}", reviewer)
            verdicts.append(verdict)
            if verdict.task is not None:
                accepted.append(verdict.task)
                report.accepted = len(accepted)
                break
            report.reasons.append(f"{n}: {verdict.reason_kind}: {verdict.reason}")
            messages += [
                {"role": "assistant", "content": reply},
                {"role": "user", "content": f"Rejected ({verdict.reason_kind}): {verdict.reason}"
                 ". Reply with a corrected blueprint, the JSON object only."},
            ]  # fmt: skip
        for kind, count in tally(verdicts).items():
            report.rejections[kind] = report.rejections.get(kind, 0) + count
        if on_blueprint is not None:
            on_blueprint(report)
    config.output.parent.mkdir(parents=True, exist_ok=True)
    config.output.write_text("".join(t.model_dump_json() + "\n" for t in accepted))
    report_path = config.output.with_suffix(".report.json")
    report_path.write_text(json.dumps(report.as_dict(), indent=1))
    return report


def _judged(checker: Checker, reply: str, task_id: str, reviewer: LLMClient | None) -> Verdict:
    """The checks' verdict on a reply, then the reviewer's on what they accept."""
    blueprint, problem = parse_blueprint(reply)
    if blueprint is None:
        return Verdict(None, "malformed", problem)
    verdict = checker.check(blueprint, task_id)
    if verdict.task is None or reviewer is None:
        return verdict
    answer = reviewer.complete(_review_prompt(checker.env, verdict.task)).message.text.strip()
    if answer.upper().startswith("APPROVE"):
        return verdict
    checker.forget(verdict.task)
    return Verdict(None, "reviewer", answer.removeprefix("REJECT").strip(" :") or answer)


def parse_blueprint(reply: str) -> tuple[Blueprint | None, str]:
    """The blueprint in a model's reply (a JSON object, fenced or not), or what is wrong."""
    fenced = _FENCE.search(reply)
    text = fenced.group(1) if fenced else reply
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        return None, "no JSON object in the reply"
    try:
        return Blueprint.model_validate(json.loads(text[start : end + 1])), ""
    except json.JSONDecodeError as e:
        return None, f"not JSON ({e.msg} at column {e.colno})"
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        return None, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"


def _prompt(env: ToolEnv[Any], anchor: Task, family: str) -> list[dict[str, Any]]:
    tools = [
        {"name": s["function"]["name"], "description": s["function"]["description"],
         "parameters": s["function"]["parameters"].get("properties", {})}
        for s in env.toolkit.schemas
    ]  # fmt: skip
    system = (
        f"You write task blueprints for the tool-use environment {env.env_id}: a user with a "
        "hidden goal talks to an agent that follows the policy below and calls the tools. A "
        "blueprint is a JSON object with: family; identity (what the user knows about "
        "themselves); auth_actions (the gold calls that identify the user); intents (each: "
        "kind, request in the user's words, slots (facts the user gives when asked), actions "
        "(gold tool calls {name, arguments}, in order), outputs (facts the user must be told, "
        "exactly as a tool result shows them)). Every gold call must succeed on the user's "
        "records; a write must change them. Reply with the JSON object only.\n\n"
        f"# Policy\n{env.system_prompt}\n\n# Tools\n{json.dumps(tools)}"
    )
    user = (
        f"An existing task, as a blueprint:\n{json.dumps(blueprint_of(anchor))}\n\n"
        f"The records of this user:\n{json.dumps(user_records(env, anchor))}\n\n"
        f"Write a new blueprint of family '{family}' for this user, with other gold calls than "
        "the example's."
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def user_records(env: ToolEnv[Any], task: Task) -> dict[str, list[Any]]:
    """Records of a desk's world that mention the task's user (their identity or id)."""
    state = env.new_state(task)
    keys = set(task.goal.identity.values())
    for action in task.auth_actions:  # the user's id, as identification returns it
        keys.add(str(env.toolkit.tools[action.name](state, **action.arguments)))
    tables = getattr(state, "bases", {})
    found: dict[str, list[Any]] = {}
    for name, records in tables.items():
        rows = [r.model_dump(mode="json") for r in records.values()
                if any(k in r.model_dump_json() for k in keys)]  # fmt: skip
        if rows:
            found[name] = rows[:RECORDS_PER_TABLE]
    return found


def _review_prompt(env: ToolEnv[Any], task: Task) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You review tasks for a tool-use environment against "
         f"its policy:\n{env.system_prompt}\nReply 'APPROVE' if the task is realistic and its "
         "gold calls follow the policy, else 'REJECT: <reason>'."},
        {"role": "user", "content": json.dumps(blueprint_of(task))},
    ]  # fmt: skip
