"""The LLM judge: any litellm model grades a trajectory against the rubric, in a JSON schema.

It sees the user's hidden goal, the agent's policy and the transcript, never the
environment's verification, so that calibration can measure it against that verification.
A reply that is not the schema is re-asked; a provider failure after retries or a judge
that never answers in the schema gives ``status="error"`` (excluded, never a fail).
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from trajgym.errors import ProviderError, TrajgymError
from trajgym.judges.judge import (
    TaskLookup,
    _error,
    _not_gradable,
    rubric_criteria,
    rubric_text,
    sha256,
)
from trajgym.llm.client import LLMClient, LLMConfig
from trajgym.records.schema import Finding, JudgeVerdict, Message, Trajectory, Usage

REPLY_FORMAT = """\
# Your reply
Reply with one JSON object and nothing else, in this shape:
{"passed": true or false, "score": a number from 0 to 1 (the share of criteria met),
 "findings": [{"criterion": "<name>", "passed": true or false, "note": "<why, one sentence>"}],
 "rationale": "<one sentence>"}
Give exactly one finding for each criterion: CRITERIA. "passed" is true only if every
finding passed."""


REASK = "That reply was not usable: {problem}. Reply again with only the JSON object."


class _FindingReply(BaseModel):
    criterion: str
    passed: bool
    note: str = ""


class JudgeReply(BaseModel):
    """The JSON an LLM judge must answer with."""

    passed: bool
    score: float = Field(ge=0.0, le=1.0)
    findings: list[_FindingReply]
    rationale: str = ""


class LLMJudge:
    """Any litellm model grading against the rubric; re-asks when a reply is not the schema."""

    def __init__(
        self, config: LLMConfig, max_parse_attempts: int = 3, lookup: TaskLookup | None = None
    ) -> None:
        self.config = config
        self.name = config.model
        self.max_parse_attempts = max_parse_attempts
        self.criteria = tuple(rubric_criteria())
        self.system_prompt = (
            rubric_text().rstrip()
            + "\n\n"
            + REPLY_FORMAT.replace("CRITERIA", ", ".join(self.criteria))
        )
        self.prompt_hash = sha256(self.system_prompt)
        self.client = LLMClient(config)  # no network until the first grade
        self._lookup = lookup or TaskLookup()

    def messages(self, t: Trajectory) -> list[dict[str, Any]]:
        """The prompt for ``t``: rubric and format, then goal, policy and transcript."""
        info = self._lookup.info(t)
        policy = next((m.text for m in t.messages if m.role == "system"), info.system_prompt)
        user = (
            f"# The user's goal (hidden from the assistant)\n{info.task.goal.instruction}\n\n"
            f"# The assistant's policy\n{policy.strip()}\n\n"
            f"# The conversation\n{render_transcript(t.messages)}\n\n"
            "Grade the assistant on every criterion and reply with the JSON object only."
        )
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": user},
        ]

    def grade(self, t: Trajectory) -> JudgeVerdict:
        """Grade ``t``; provider failures and unparseable replies give ``status="error"``."""
        if (skip := _not_gradable(t, self)) is not None:
            return skip
        usage = Usage()
        try:
            messages = self.messages(t)
        except TrajgymError as e:
            return _error(f"task lookup: {e}", self)
        problem = ""
        for _ in range(self.max_parse_attempts):
            try:
                completion = self.client.complete(messages)
            except ProviderError as e:
                return _error(f"provider error: {e}", self, usage)
            usage = usage + completion.usage
            text = completion.message.text
            reply, problem = self._parse(text)
            if reply is not None:
                return JudgeVerdict(
                    **reply.model_dump(exclude={"findings"}),
                    findings=tuple(Finding(**f.model_dump()) for f in reply.findings),
                    judge=self.name,
                    prompt_hash=self.prompt_hash,
                    usage=usage,
                )
            correction = REASK.format(problem=problem)
            messages += [
                {"role": "assistant", "content": text},
                {"role": "user", "content": correction},
            ]
        reason = f"no valid verdict in {self.max_parse_attempts} replies (last: {problem})"
        return _error(f"unparseable reply: {reason}", self, usage)

    def _parse(self, text: str) -> tuple[JudgeReply | None, str]:
        data = extract_json(text)
        if data is None:
            return None, "no JSON object found"
        try:
            reply = JudgeReply.model_validate(data)
        except ValidationError as e:
            first = e.errors(include_url=False)[0]
            return None, f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
        named = [f.criterion for f in reply.findings]
        if sorted(named) != sorted(self.criteria):
            return None, f"findings must cover exactly {', '.join(self.criteria)}; got {named}"
        if reply.passed != all(f.passed for f in reply.findings):
            return None, '"passed" must be true exactly when every finding passed'
        return reply, ""


def extract_json(text: str) -> dict[str, Any] | None:
    """The first JSON object in ``text``, fenced in ```json or surrounded by prose."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def render_transcript(messages: tuple[Message, ...]) -> str:
    """The conversation as plain text: roles, tool calls with arguments, tool results."""
    lines = []
    for n, m in enumerate(messages):
        if m.role == "system":
            continue  # shown once, as the policy
        if m.role == "tool":
            lines.append(f"[{n}] TOOL RESULT ({m.name or m.tool_call_id}): {m.text}")
            continue
        if m.text:
            lines.append(f"[{n}] {m.role.upper()}: {m.text}")
        for c in m.tool_calls or ():
            lines.append(f"[{n}] ASSISTANT CALLS {c.function.name}({c.function.arguments})")
    return "\n".join(lines)
