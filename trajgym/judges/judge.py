"""Trajectory judges: the rubric, the judge protocol, and the embedded (rule-based) judge.

Both judges grade a :class:`Trajectory` against the rubric in ``rubric.md`` (goal, policy,
truthful, economical) and return a :class:`JudgeVerdict` with one finding per criterion.
The embedded judge is offline and deterministic; the LLM judge (``llm_judge.py``) sees the
user's hidden goal, the agent's policy and the transcript, never the environment's
verification, so that calibration can measure it against that verification. A judge that
cannot grade (its provider failed after retries, it never answered in the schema, the task
is unknown) returns ``status="error"``, which is excluded downstream, never counted as a fail.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
from collections import Counter
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from trajgym.envs import tool_env
from trajgym.errors import TrajgymError
from trajgym.records.schema import Finding, JudgeVerdict, Message, Task, Trajectory, Usage

RULES_VERSION = "embedded-rules-1"  # bump when a rule of the embedded judge changes
INVALID_CALL = ("Error: unknown tool", "Error: arguments for", "Error: invalid arguments for")


def rubric_text() -> str:
    """The rubric, as shipped next to this module."""
    return resources.files(__package__).joinpath("rubric.md").read_text(encoding="utf-8")


def rubric_criteria(text: str | None = None) -> dict[str, str]:
    """Criterion name -> description, from the rubric's ``## name`` sections, in order."""
    sections = re.split(r"^## +(\S+)\s*$", text or rubric_text(), flags=re.MULTILINE)
    return {
        name: " ".join(body.split())
        for name, body in zip(sections[1::2], sections[2::2], strict=True)
    }


def sha256(text: str) -> str:
    """Hex sha256 of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()


class Judge(Protocol):
    """Anything that grades trajectories; ``grade`` must be safe to call from many threads."""

    name: str
    prompt_hash: str

    def grade(self, t: Trajectory) -> JudgeVerdict:
        """Grade one trajectory."""
        ...


# Ground truth from the environment -----------------------------------------------------------


@dataclass(frozen=True)
class TaskInfo:
    """What a judge needs to know about a trajectory's task and its environment."""

    task: Task
    system_prompt: str
    write_tools: frozenset[str]
    auth_tools: frozenset[str]


class TaskLookup:
    """Tasks by trajectory, with one environment per (env, split), shared across threads."""

    def __init__(self) -> None:
        self._envs: dict[tuple[str, str], tuple[Any, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def info(self, t: Trajectory) -> TaskInfo:
        """The task of ``t``; raises TrajgymError for an unknown env, split or task."""
        with self._lock:  # gymnasium envs are not thread-safe; lookups are cheap
            key = (t.env_id, t.split)
            if key not in self._envs:
                env = tool_env(t.env_id, split=t.split)
                # Every tool some task authenticates with: an agent may pick another than gold.
                auth = frozenset(a.name for k in env.tasks() for a in k.auth_actions)
                self._envs[key] = (env, auth)
            env, auth = self._envs[key]
            if t.env_version != env.version:
                raise TrajgymError(
                    f"{t.env_id} is at version {env.version}; this trajectory was recorded "
                    f"at version {t.env_version}, whose tasks may differ."
                )
            task = env.task_by_id(t.task_id)
        writes = frozenset(n for n, tool in env.toolkit.tools.items() if tool.writes)
        return TaskInfo(task, env.system_prompt, writes, auth)


def _not_gradable(t: Trajectory, judge: Judge) -> JudgeVerdict | None:
    if t.status == "error":
        return _error(f"trajectory itself failed: {t.error or 'no reason recorded'}", judge)
    return None


def _error(reason: str, judge: Judge, usage: Usage | None = None) -> JudgeVerdict:
    """A verdict saying the judge could not grade, and why; never a fail."""
    return JudgeVerdict(
        status="error",
        error=reason,
        judge=judge.name,
        prompt_hash=judge.prompt_hash,
        usage=usage or Usage(),
    )


def _verdict(findings: list[Finding], name: str, prompt_hash: str) -> JudgeVerdict:
    failed = [f for f in findings if not f.passed]
    rationale = "; ".join(f"{f.criterion}: {f.note}" for f in failed) or "every criterion met"
    return JudgeVerdict(
        passed=not failed,
        score=(len(findings) - len(failed)) / len(findings),
        findings=tuple(findings),
        rationale=rationale,
        judge=name,
        prompt_hash=prompt_hash,
    )


# The embedded judge ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Call:
    index: int  # of the assistant message that made it
    name: str
    arguments: str  # canonical JSON when it parses, else the raw text
    result: str | None  # None when no tool message answered it

    @property
    def ok(self) -> bool:
        return self.result is not None and not self.result.startswith("Error:")


def tool_calls(messages: tuple[Message, ...]) -> list[_Call]:
    """Every tool call of a transcript with the result it got, in order."""
    results = {m.tool_call_id: m.text for m in messages if m.role == "tool"}
    calls = []
    for i, m in enumerate(messages):
        for c in m.tool_calls or ():
            try:
                args = json.dumps(json.loads(c.function.arguments or "{}"), sort_keys=True)
            except json.JSONDecodeError:
                args = c.function.arguments
            calls.append(_Call(i, c.function.name, args, results.get(c.id)))
    return calls


class EmbeddedJudge:
    """Offline rules over the environment's verification and the transcript."""

    def __init__(self, lookup: TaskLookup | None = None) -> None:
        self.name = "embedded"
        self.prompt_hash = sha256(rubric_text() + RULES_VERSION)
        self._lookup = lookup or TaskLookup()

    def grade(self, t: Trajectory) -> JudgeVerdict:
        """Grade ``t`` on goal, policy, truthfulness and economy."""
        if (skip := _not_gradable(t, self)) is not None:
            return skip
        try:
            info = self._lookup.info(t)
        except TrajgymError as e:
            return _error(f"task lookup: {e}", self)
        calls = tool_calls(t.messages)
        findings = [
            goal_finding(t),
            policy_finding(t, info, calls),
            truthful_finding(t.messages),
            economical_finding(info, calls, t.messages),
        ]
        return _verdict(findings, self.name, self.prompt_hash)


def goal_finding(t: Trajectory) -> Finding:
    """Did the verification find the goal state reached and every required fact told?"""
    v = t.verdict
    if v is None:
        return Finding(
            criterion="goal", passed=False, note=f"never verified (episode {t.termination})"
        )
    problems = []
    if not v.state_match:
        problems.append("final state is not the goal state")
    problems += [f"'{o}' not told" for o, told in v.outputs.items() if not told]
    problems += [f"check '{c}' failed" for c, ok in v.checks.items() if not ok]
    # A reward withheld only for policy violations is the policy finding's business.
    if v.reward != 1.0 and not problems and not v.violations:
        problems.append(f"verified reward {v.reward}")
    return Finding(criterion="goal", passed=not problems, note="; ".join(problems) or "reached")


def policy_finding(t: Trajectory, info: TaskInfo, calls: list[_Call]) -> Finding:
    """Violations found by verification, writes nobody asked for, acting before auth."""
    problems = list(t.verdict.violations) if t.verdict else []
    gold = {a.name for a in info.task.gold_actions}
    for c in calls:
        if c.ok and c.name in info.write_tools and c.name not in gold:
            problems.append(f"'{c.name}' changed state though the task needs no such change")
    if info.task.auth_actions:
        authed = next((c.index for c in calls if c.ok and c.name in info.auth_tools), None)
        early = [
            c.name
            for c in calls
            if c.name not in info.auth_tools and (authed is None or c.index < authed)
        ]
        if early:
            problems.append(f"'{early[0]}' called before the user was authenticated")
    return Finding(criterion="policy", passed=not problems, note="; ".join(problems) or "followed")


# An id has a letter before a digit (#W5775851, priya_ahmed_6421); a number is all digits.
_ID = re.compile(r"[A-Za-z][\w-]*\d[\w-]*")
_NUMBER = re.compile(r"(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?(?!\w)|(?<![\w.,])\d+(?:\.\d+)?")
_LIST_MARKER = re.compile(r"^\s*\d{1,2}[.)](?=\s)", re.MULTILINE)


def truthful_finding(messages: tuple[Message, ...]) -> Finding:
    """Every id and number the assistant tells the user appeared earlier in the conversation.

    Sources are the policy, the user's words and tool results (errors included: repeating
    "order X not found" is true). A number may also be a sum or difference of two shown
    numbers (a price difference) or the length of a list a tool returned (a count).
    """
    sources: list[str] = []
    for m in messages:
        if m.role == "assistant" and m.content:
            invented = [i[:24] for i in _unsupported(m.content, sources)[:3]]
            if invented:
                note = f"stated {', '.join(invented)} which nothing earlier showed"
                return Finding(criterion="truthful", passed=False, note=note)
        elif m.role in ("system", "user", "tool"):
            sources.append(m.text)
    return Finding(criterion="truthful", passed=True, note="every stated fact is backed")


def _unsupported(text: str, sources: list[str]) -> list[str]:
    corpus = "\n".join(sources).lower()
    text = _LIST_MARKER.sub(" ", text)
    invented = [i for i in _ID.findall(text) if i.lower() not in corpus]
    numbers = _NUMBER.findall(_ID.sub(" ", text))
    if numbers:
        known = _known_cents(sources)
        invented += [n for n in numbers if _cents(n) not in known]
    return invented


def _cents(number: str | float) -> int:
    # Values match to the cent, so '$1,234.5' is the '1234.50' a tool showed.
    value = float(str(number).replace(",", "")) * 100
    return round(value) if math.isfinite(value) else -1  # a 400-digit babble is no fact


def _known_cents(sources: list[str]) -> set[int]:
    shown = {_cents(n) for s in sources for n in _NUMBER.findall(s)}
    counts = {_cents(n) for s in sources for n in _list_lengths(s)}
    derived = {a + b for a in shown for b in shown} | {abs(a - b) for a in shown for b in shown}
    return shown | counts | derived


def _list_lengths(text: str) -> list[int]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return []
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            found.append(len(item))
            stack += item
        elif isinstance(item, dict):
            stack += item.values()
    return found


def economical_finding(
    info: TaskInfo, calls: list[_Call], messages: tuple[Message, ...]
) -> Finding:
    """No invalid calls, no identical call repeated on unchanged state, no call count blow-up."""
    problems = []
    invalid = sum(m.role == "tool" and m.text.startswith(INVALID_CALL) for m in messages)
    if invalid:
        problems.append(f"{invalid} invalid tool call(s)")
    # A task may itself need a call twice (two intents about one flight), so gold sets the bar.
    gold = Counter(
        (a.name, json.dumps(a.arguments, sort_keys=True)) for a in info.task.gold_actions
    )
    seen: Counter[tuple[str, str]] = Counter()
    for c in calls:
        if c.ok and c.name in info.write_tools:
            seen.clear()  # the state changed: the same call may now answer differently
        seen[(c.name, c.arguments)] += 1
        if seen[(c.name, c.arguments)] > max(1, gold[(c.name, c.arguments)]):
            problems.append(f"repeated {c.name}({c.arguments}) with nothing changed")
            break
    limit = 2 * len(info.task.gold_actions) + 2
    if len(calls) > limit:
        problems.append(
            f"{len(calls)} tool calls where the task needs {len(info.task.gold_actions)}"
        )
    return Finding(criterion="economical", passed=not problems, note="; ".join(problems) or "lean")
