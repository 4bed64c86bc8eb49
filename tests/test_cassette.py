"""Record / replay of every LLM call: offline replays, recorded failures, re-scoring, the judge.

Every fake model here numbers its answers in arrival order, so an accidental live call (or
answers handed to the wrong episode) changes the output; replays point at a "tripwire"
server that counts any request it gets, which must stay at zero.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from trajgym.cli import app
from trajgym.envs.base import ToolEnv
from trajgym.errors import ConfigError, ProviderError
from trajgym.judges.calibration import grade_all
from trajgym.judges.judge import rubric_criteria
from trajgym.judges.llm_judge import LLMJudge
from trajgym.llm.cassette import (
    REPLAY_ENV,
    Cassette,
    CassetteError,
    NotRecorded,
    RecordedCall,
    cassette_scope,
    open_cassette,
)
from trajgym.llm.client import LLMClient, LLMConfig
from trajgym.records.schema import Trajectory
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import AgentSpec, GenerateConfig, UserSpec
from trajgym.rollouts.generate import generate
from trajgym.testing.fake_openai import (
    FakeOpenAIServer,
    FaultPlan,
    Responder,
    scripted_agent_responder,
    scripted_user_responder,
)

Key = tuple[str, str, int]


def numbered(responder: Responder) -> Responder:
    """``responder`` with ' #k' appended to every text reply, k counting requests."""
    counter = itertools.count()

    def respond(body: dict[str, Any]) -> dict[str, Any]:
        reply = dict(responder(body))
        k = next(counter)
        if reply.get("content"):
            reply["content"] = f"{reply['content']} #{k}"
        return reply

    return respond


def tripwire(body: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": "a live call, which a replay must never make"}


def llm(server: FakeOpenAIServer, **kw: Any) -> LLMConfig:
    defaults: dict[str, Any] = dict(
        model="openai/fake",
        api_base=server.base_url,
        temperature=0.7,
        backoff_s=0.01,
        backoff_max_s=0.02,
        timeout_s=5,
        input_cost_per_token=1e-6,  # a non-zero cost, which a replay must report the same
    )
    return LLMConfig(**{**defaults, **kw})


def config(teacher: LLMConfig, user: LLMConfig | None, output: Path, **kw: Any) -> GenerateConfig:
    settings: dict[str, Any] = dict(
        envs=["trajgym/Retail-v1"],
        num_tasks=3,
        samples_per_task=2,
        personas=["terse"],  # both samples of a task then open with the very same request
        concurrency=4,
        output=output,
        agent=AgentSpec(kind="litellm", llm=teacher),
        user=UserSpec(kind="litellm", llm=user) if user else UserSpec(),
    )
    return GenerateConfig(**{**settings, **kw})


def by_key(path: Path) -> dict[Key, dict[str, Any]]:
    """Each trajectory as JSON, without its wall-clock timings."""
    return {t.key: t.model_dump(mode="json", exclude={"timings"}) for t in read_trajectories(path)}


@dataclass
class Recording:
    cassette: Path
    output: Path
    teacher: LLMConfig
    user: LLMConfig
    usage: dict[str, Any]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    """A generation with an LLM teacher and an LLM user, at concurrency 4, recorded."""
    root = tmp_path_factory.mktemp("recorded")
    with (
        FakeOpenAIServer(numbered(scripted_agent_responder), latency_s=0.01) as agent,
        FakeOpenAIServer(numbered(scripted_user_responder), latency_s=0.01) as user,
    ):
        teacher, simulator = llm(agent), llm(user)
        cfg = config(teacher, simulator, root / "t.jsonl", record=root / "calls.jsonl")
        report = generate(cfg, show_progress=False)
        assert agent.stats.max_in_flight > 1, "episodes should overlap"
    assert report.written == 6 and report.ok > 0
    return Recording(root / "calls.jsonl", cfg.output, teacher, simulator, report.as_dict())


def replay_run(
    recording: Recording, output: Path, teacher_changes: dict[str, Any] | None = None
) -> tuple[GenerateConfig, int]:
    """Replay the recording's generation into ``output``; returns the config and live calls."""
    with FakeOpenAIServer(tripwire) as wire:
        changes = {"api_base": wire.base_url, **(teacher_changes or {})}
        teacher = recording.teacher.model_copy(update=changes)
        user = recording.user.model_copy(update={"api_base": wire.base_url})
        cfg = config(teacher, user, output, replay=recording.cassette)
        generate(cfg, show_progress=False)
    return cfg, wire.stats.requests


def test_a_replay_equals_the_recording_without_any_provider(
    recording: Recording, tmp_path: Path
) -> None:
    cfg, live = replay_run(recording, tmp_path / "replayed.jsonl")
    assert live == 0
    assert by_key(cfg.output) == by_key(recording.output)
    summary = json.loads(cfg.output.with_suffix(".summary.json").read_text())
    usage, recorded = summary["usage"], recording.usage["usage"]
    # The run's total adds episodes in the order they finish: equal up to float rounding.
    assert usage["cost_usd"] == pytest.approx(recorded["cost_usd"]) and usage["cost_usd"] > 0
    assert usage["prompt_tokens"] == recorded["prompt_tokens"] > 0
    assert usage["completion_tokens"] == recorded["completion_tokens"]
    for field in ("ok", "errors", "successes", "simulator_turns", "simulator_faults"):
        assert summary[field] == recording.usage[field]


def test_identical_requests_of_different_episodes_keep_their_own_answers(
    recording: Recording,
) -> None:
    records = [RecordedCall.model_validate_json(line) for line in recording.cassette.open()]
    answers: dict[str, dict[tuple[str, ...], str]] = {}
    for r in records:
        answers.setdefault(r.request, {})[r.scope] = r.message.text if r.message else ""
    shared = [a for a in answers.values() if len(a) > 1]
    assert shared, "both samples of a task open with the same request"
    assert all(len(set(a.values())) == len(a) for a in shared), "each scope its own answer"
    assert {r.scope[0] for r in records} == {"trajgym/Retail"}  # scoped without the version


def test_a_call_never_recorded_is_an_error_and_never_sent(
    recording: Recording, tmp_path: Path
) -> None:
    # A teacher with another decoding setting asks requests the cassette never saw.
    cfg, live = replay_run(recording, tmp_path / "changed.jsonl", {"max_tokens": 77})
    assert live == 0
    got, recorded = by_key(cfg.output), by_key(recording.output)
    assert got.keys() == recorded.keys()
    for key, t in got.items():
        assert t["status"] == "error" and t["reward"] is None
        assert t["error"].startswith("agent: NotRecorded: openai/fake: not in cassette")
        assert "#0 in scope trajgym/Retail/" in t["error"] and "record again" in t["error"]
        assert t["messages"][1] == recorded[key]["messages"][1]  # the user's opening replayed


def test_a_changed_verifier_rescores_the_replayed_episodes(
    recording: Recording, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = ToolEnv.verify

    def lenient(self: ToolEnv[Any]) -> Any:  # a "fixed" verifier: looking the user up suffices
        verdict = original(self)
        looked_up = any(m.tool_calls for m in self.transcript)
        return verdict.model_copy(update={"reward": 1.0 if looked_up else 0.0})

    monkeypatch.setattr(ToolEnv, "verify", lenient)
    cfg, live = replay_run(recording, tmp_path / "rescored.jsonl")
    assert live == 0
    before, after = by_key(recording.output), by_key(cfg.output)
    assert [t["messages"] for t in after.values()] == [before[k]["messages"] for k in after]
    changed = [k for k in after if after[k]["reward"] != before[k]["reward"]]
    assert changed and all(after[k]["reward"] == 1.0 for k in changed)


def test_provider_failures_replay_as_the_same_error_episodes(tmp_path: Path) -> None:
    faults = FaultPlan(rate=0.25, kinds=("server_error", "rate_limit", "malformed"), seed=5)
    with FakeOpenAIServer(numbered(scripted_agent_responder), faults=faults) as agent:
        teacher = llm(agent, max_attempts=1)
        # One episode at a time, so that the seeded faults fall on the same calls every run.
        out, calls = tmp_path / "t.jsonl", tmp_path / "calls.jsonl"
        cfg = config(teacher, None, out, record=calls, concurrency=1, num_tasks=4)
        generate(cfg, show_progress=False)
    recorded = by_key(cfg.output)
    errors = {k for k, t in recorded.items() if t["status"] == "error"}
    assert errors and len(errors) < len(recorded), "some episodes failed, some did not"
    with FakeOpenAIServer(tripwire) as wire:
        again = config(
            teacher.model_copy(update={"api_base": wire.base_url}),
            None,
            tmp_path / "replayed.jsonl",
            replay=calls,
            num_tasks=4,
        )
        generate(again, show_progress=False)
        assert wire.stats.requests == 0
    assert by_key(again.output) == recorded


# One client: occurrences, scopes, modes -------------------------------------------------------


def ask(client: LLMClient, text: str = "Hello?") -> str:
    return client.complete([{"role": "user", "content": text}]).message.text


def in_scopes(client: LLMClient, order: list[str]) -> dict[str, list[str]]:
    """Ask the same question twice in each scope, the scopes on concurrent threads."""
    answers: dict[str, list[str]] = {}

    def episode(name: str) -> None:
        with cassette_scope("episode", name):
            answers[name] = [ask(client), ask(client)]

    threads = [threading.Thread(target=episode, args=(name,)) for name in order]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def server(responder: Responder = scripted_agent_responder, **kw: Any) -> FakeOpenAIServer:
    return FakeOpenAIServer(numbered(responder), **kw)


def test_repeated_requests_get_each_recorded_answer_in_turn_per_scope(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    with server(latency_s=0.01) as live:
        recorded = in_scopes(LLMClient(llm(live, record=path)), ["a", "b", "c"])
    assert len({a for answers in recorded.values() for a in answers}) == 6
    with FakeOpenAIServer(tripwire) as wire:
        client = LLMClient(llm(wire, replay=path))
        assert in_scopes(client, ["c", "a", "b"]) == recorded
        assert wire.stats.requests == 0 and client.replayed == client.calls == 6
    with FakeOpenAIServer(tripwire) as wire:  # recording again answers what is recorded
        client = LLMClient(llm(wire, record=path))
        assert in_scopes(client, ["b", "c", "a"]) == recorded and wire.stats.requests == 0


def test_the_key_ignores_transport_settings_but_not_decoding(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    with server() as live:
        first = ask(LLMClient(llm(live, record=path)))
    with FakeOpenAIServer(tripwire) as wire:
        same = llm(wire, replay=path, timeout_s=99, max_attempts=2, max_concurrency=3)
        assert ask(LLMClient(same)) == first
        with pytest.raises(NotRecorded, match=r"scope \(no scope\), which holds 1 recorded"):
            ask(LLMClient(llm(wire, replay=path, temperature=0.8)))
        assert wire.stats.requests == 0


def test_a_recorded_failure_replays_and_is_retried_when_recording(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    with server(faults=FaultPlan(rate=1.0, kinds=("server_error",))) as down:
        with pytest.raises(ProviderError) as failed:
            ask(LLMClient(llm(down, record=path, max_attempts=2)))
    with FakeOpenAIServer(tripwire) as wire:
        with pytest.raises(ProviderError) as replayed:
            ask(LLMClient(llm(wire, replay=path)))
        assert str(replayed.value) == str(failed.value) and "after up to 2 attempts" in str(
            failed.value
        )
    with server() as up:  # the provider is back: a recorded failure is asked again
        answer = ask(LLMClient(llm(up, record=path)))
        assert up.stats.requests == 1
    with FakeOpenAIServer(tripwire) as wire:
        assert ask(LLMClient(llm(wire, replay=path))) == answer  # the later line wins


def test_a_torn_tail_is_cut_and_a_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "calls.jsonl"
    with server() as live:
        client = LLMClient(llm(live, record=path))
        answers = [ask(client, f"question {i}") for i in range(3)]
    with path.open("a") as f:
        f.write('{"version": 1, "scope": ["trajgym/Ret')
    assert Cassette(path).repaired_bytes == 0 and len(Cassette(path)) == 3  # replay skips it
    cassette = open_cassette(path, writable=True)  # the file changed: read again, and cut
    assert cassette.repaired_bytes > 0 and len(cassette) == 3
    assert path.read_text().endswith("\n")
    with FakeOpenAIServer(tripwire) as wire:
        client = LLMClient(llm(wire, replay=path))
        assert [ask(client, f"question {i}") for i in range(3)] == answers
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '{"not": "a record"}', lines[1]]) + "\n")
    with pytest.raises(CassetteError, match=r"calls.jsonl:2 is not a trajgym cassette record"):
        Cassette(path)
    with pytest.raises(CassetteError, match="does not exist. Record one first"):
        LLMClient(LLMConfig(model="openai/fake", replay=tmp_path / "missing.jsonl"))


def test_modes_are_exclusive_and_a_replay_needs_no_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "calls.jsonl"
    path.write_text("")
    with pytest.raises(ValueError, match="either 'record' or 'replay'"):
        LLMConfig(model="openai/x", record=path, replay=path)
    with pytest.raises(ValueError, match="either 'record' or 'replay'"):
        GenerateConfig(record=path, replay=path)
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError):
        LLMClient(LLMConfig(model="openai/x", api_key_env="NO_SUCH_KEY"))
    assert LLMClient(LLMConfig(model="openai/x", api_key_env="NO_SUCH_KEY", replay=path)).replaying
    monkeypatch.setenv("TRAJGYM_RECORD", str(path))
    monkeypatch.setenv(REPLAY_ENV, str(path))
    with pytest.raises(ConfigError, match="not both"):
        LLMClient(LLMConfig(model="openai/x"))


# The judge and the command line -------------------------------------------------------------


def judge_responder() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Prose first (the judge re-asks), then verdicts that pass or fail by arrival order."""
    counter = itertools.count()

    def respond(body: dict[str, Any]) -> dict[str, Any]:
        k = next(counter)
        if len(body["messages"]) == 2 and k % 3 == 0:
            return {"role": "assistant", "content": f"Looks fine to me ({k})."}
        passed = k % 2 == 0
        findings = [{"criterion": c, "passed": passed, "note": f"#{k}"} for c in rubric_criteria()]
        verdict = {"passed": passed, "score": float(passed), "findings": findings}
        return {"role": "assistant", "content": json.dumps({**verdict, "rationale": f"#{k}"})}

    return respond


@pytest.fixture(scope="module")
def expert_trajectories(tmp_path_factory: pytest.TempPathFactory) -> list[Trajectory]:
    out = tmp_path_factory.mktemp("expert") / "t.jsonl"
    generate(
        GenerateConfig(envs=["trajgym/RetailLite-v0"], num_tasks=4, samples_per_task=2, output=out),
        show_progress=False,
    )
    return list(read_trajectories(out))


def test_judge_grades_replay_bit_for_bit_through_the_environment_variable(
    expert_trajectories: list[Trajectory], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "judge.jsonl"
    with FakeOpenAIServer(judge_responder(), latency_s=0.01) as live:
        judge = LLMJudge(llm(live, record=path))
        graded = grade_all(judge, expert_trajectories, concurrency=4)
        assert live.stats.max_in_flight > 1 and judge.client.calls > len(graded)  # re-asks
    verdicts = [t.judge for t in graded]
    assert {v.passed for v in verdicts if v} == {True, False}
    monkeypatch.setenv(REPLAY_ENV, str(path))
    with FakeOpenAIServer(tripwire) as wire:
        judge = LLMJudge(LLMConfig(model="openai/fake", api_base=wire.base_url, temperature=0.7))
        replayed = grade_all(judge, expert_trajectories, concurrency=4)
        assert wire.stats.requests == 0 and judge.client.replaying
    assert [t.judge for t in replayed] == verdicts


def test_cli_generate_records_and_replays(tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--env", "trajgym/RetailLite-v0", "--num-tasks", "2", "--concurrency", "2"]
    common += ["--agent-model", "openai/fake"]

    def run(base_url: str, out: str, *mode: str) -> None:
        args = ["generate", *common, "--api-base", base_url, "-o", str(tmp_path / out), *mode]
        result = runner.invoke(app, args, env={"COLUMNS": "120"})
        assert result.exit_code == 0, result.output

    with server() as live:
        run(live.base_url, "recorded.jsonl", "--record", str(tmp_path / "calls.jsonl"))
        assert live.stats.requests > 0
    with FakeOpenAIServer(tripwire) as wire:
        run(wire.base_url, "replayed.jsonl", "--replay", str(tmp_path / "calls.jsonl"))
        assert wire.stats.requests == 0
    assert by_key(tmp_path / "replayed.jsonl") == by_key(tmp_path / "recorded.jsonl")


def test_scopes_nest_and_restore() -> None:
    from trajgym.llm.cassette import current_scope

    assert current_scope() is None
    with cassette_scope("a", 1) as outer:
        with cassette_scope("judge") as inner:
            assert inner.labels == ("a", "1", "judge") and current_scope() is inner
        assert current_scope() is outer
    assert current_scope() is None


@pytest.fixture(autouse=True)
def _no_cassette_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("TRAJGYM_RECORD", raising=False)
    monkeypatch.delenv(REPLAY_ENV, raising=False)
    yield
