"""The trajectory judges, their calibration against verification, filtering, and the CLI."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trajgym.agents.baselines import DoNothingAgent, RandomToolAgent
from trajgym.agents.expert import ScriptedExpert
from trajgym.cli.judge import judge_app
from trajgym.envs import make
from trajgym.errors import TrajgymError
from trajgym.judges.calibration import (
    JudgeConfig,
    agreement_metrics,
    calibrate,
    filter_trajectories,
    grade_all,
    grade_file,
    make_judge,
)
from trajgym.judges.judge import EmbeddedJudge, rubric_criteria
from trajgym.judges.llm_judge import LLMJudge, extract_json
from trajgym.llm.client import LLMConfig
from trajgym.records.schema import (
    FunctionCall,
    JudgeVerdict,
    Message,
    ToolCall,
    Trajectory,
)
from trajgym.records.store import read_trajectories
from trajgym.rollouts.rollout import rollout
from trajgym.testing.fake_openai import FakeOpenAIServer, FaultPlan

ENV = "trajgym/RetailLite-v0"
CRITERIA = ["goal", "policy", "truthful", "economical"]
runner = CliRunner()


@pytest.fixture(scope="module")
def env():
    e = make(ENV, split="test")
    yield e
    e.close()


@pytest.fixture(scope="module")
def expert(env) -> list[Trajectory]:
    tasks = env.unwrapped.tasks("test")
    families = {}
    for task in tasks:  # the first task of every family, then a few more
        families.setdefault(task.family, task)
    chosen = list({t.id: t for t in [*families.values(), *tasks[:5]]}.values())
    return [rollout(env, ScriptedExpert(), seed=i, task_id=t.id) for i, t in enumerate(chosen)]


@pytest.fixture(scope="module")
def floor(env) -> list[Trajectory]:
    tasks = env.unwrapped.tasks("test")[:3]
    return [
        rollout(env, agent, seed=i, task_id=t.id, sample_index=100 + n)
        for n, agent in enumerate([DoNothingAgent(), RandomToolAgent()])
        for i, t in enumerate(tasks)
    ]


def cancel(expert: list[Trajectory]) -> Trajectory:
    return next(t for t in expert if t.family == "cancel_pending_order")


def replace_text(t: Trajectory, old: str, new: str) -> Trajectory:
    """``t`` with ``old`` replaced in the last assistant message that says it."""
    messages = list(t.messages)
    i = max(i for i, m in enumerate(messages) if m.role == "assistant" and old in m.text)
    messages[i] = messages[i].model_copy(update={"content": messages[i].text.replace(old, new)})
    return t.model_copy(update={"messages": tuple(messages)})


def call(name: str, arguments: dict, call_id: str) -> Message:
    fc = FunctionCall(name=name, arguments=json.dumps(arguments))
    return Message(role="assistant", tool_calls=(ToolCall(id=call_id, function=fc),))


# The embedded judge ----------------------------------------------------------------------------


def test_embedded_judge_passes_the_expert(expert: list[Trajectory]) -> None:
    judge = EmbeddedJudge()
    for t in expert:
        v = judge.grade(t)
        assert t.success and v.status == "ok" and v.passed, (t.task_id, v.rationale)
        assert [f.criterion for f in v.findings] == CRITERIA == list(rubric_criteria())
        assert v.score == 1.0 and v.judge == "embedded" and v.prompt_hash == judge.prompt_hash
    assert len({t.family for t in expert}) == 3


def test_embedded_judge_fails_the_floor_agents(floor: list[Trajectory]) -> None:
    judge = EmbeddedJudge()
    for t in floor:
        v = judge.grade(t)
        assert not t.success and v.status == "ok" and v.passed is False
        assert not v.findings[0].passed and v.score is not None and v.score < 1
        assert "goal:" in v.rationale


def test_an_invented_number_fails_truthful_though_verified(expert: list[Trajectory]) -> None:
    t = cancel(expert)
    amount = next(o for o in t.verdict.outputs)  # the refund the user had to be told
    lie = replace_text(t, f"${amount}", f"${amount}, plus a $12.34 voucher,")
    v = EmbeddedJudge().grade(lie)
    assert lie.success and not v.passed  # verification cannot see the lie; the judge does
    truthful = {f.criterion: f for f in v.findings}["truthful"]
    assert not truthful.passed and "12.34" in truthful.note
    invented_id = replace_text(t, "Order #W", "Order #W9999999 (was #W")
    assert not EmbeddedJudge().grade(invented_id).passed


def test_list_markers_and_repeated_facts_are_not_inventions(expert: list[Trajectory]) -> None:
    t = cancel(expert)
    amount = next(o for o in t.verdict.outputs)
    order = next(w for m in t.messages for w in m.text.split() if w.startswith("#W"))
    summary = f"will be refunded.\nSummary:\n1. {order} cancelled\n2. ${amount} refunded\n"
    polite = replace_text(t, "will be refunded", summary)
    assert polite != t
    assert EmbeddedJudge().grade(polite).passed


def test_a_repeated_identical_call_fails_economical(expert: list[Trajectory]) -> None:
    t = cancel(expert)
    i = next(
        i
        for i, m in enumerate(t.messages)
        if m.tool_calls and m.tool_calls[0].function.name == "get_order_details"
    )
    again = t.messages[i].tool_calls[0].model_copy(update={"id": "call_again"})
    result = t.messages[i + 1].model_copy(update={"tool_call_id": "call_again"})
    messages = (
        *t.messages[: i + 2],
        Message(role="assistant", tool_calls=(again,)),
        result,
        *t.messages[i + 2 :],
    )
    v = EmbeddedJudge().grade(t.model_copy(update={"messages": messages}))
    economical = {f.criterion: f for f in v.findings}["economical"]
    assert (
        not v.passed and not economical.passed and "repeated get_order_details" in economical.note
    )


def test_acting_before_authentication_and_violations_fail_policy(expert: list[Trajectory]) -> None:
    t = cancel(expert)
    order = next(w.strip(".,") for m in t.messages for w in m.text.split() if w.startswith("#W"))
    early = (
        call("get_order_details", {"order_id": order}, "call_early"),
        Message(role="tool", tool_call_id="call_early", name="get_order_details", content="{}"),
    )
    peeked = t.model_copy(update={"messages": (*t.messages[:2], *early, *t.messages[2:])})
    policy = {f.criterion: f for f in EmbeddedJudge().grade(peeked).findings}["policy"]
    assert not policy.passed and "before the user was authenticated" in policy.note
    assert t.verdict is not None
    rushed = t.model_copy(
        update={"verdict": t.verdict.model_copy(update={"violations": ("'x' unconfirmed",)})}
    )
    findings = {f.criterion: f for f in EmbeddedJudge().grade(rushed).findings}
    assert findings["goal"].passed and not findings["policy"].passed


def test_failed_or_unknown_trajectories_are_errors_not_fails(expert: list[Trajectory]) -> None:
    broken = expert[0].model_copy(update={"status": "error", "error": "user: simulator down"})
    v = EmbeddedJudge().grade(broken)
    assert v.status == "error" and v.passed is None and v.score is None
    assert v.error == "trajectory itself failed: user: simulator down"
    unknown = EmbeddedJudge().grade(expert[0].model_copy(update={"task_id": "test-nope-00000"}))
    assert unknown.status == "error" and unknown.error and unknown.error.startswith("task lookup")


# The LLM judge ---------------------------------------------------------------------------------


def verdict_json(passed: bool = True) -> str:
    findings = [{"criterion": c, "passed": passed, "note": "ok"} for c in CRITERIA]
    return json.dumps(
        {"passed": passed, "score": 1.0 if passed else 0.0, "findings": findings, "rationale": "r"}
    )


def llm(server: FakeOpenAIServer, **kw) -> LLMConfig:
    defaults = dict(
        model="openai/fake",
        api_base=server.base_url,
        backoff_s=0.01,
        backoff_max_s=0.02,
        timeout_s=2,
    )
    return LLMConfig(**{**defaults, **kw})


def test_llm_judge_records_model_hash_and_usage(expert: list[Trajectory]) -> None:
    fenced = f"Here is my grade:\n```json\n{verdict_json()}\n```\nThanks."
    with FakeOpenAIServer(lambda body: {"role": "assistant", "content": fenced}) as server:
        judge = LLMJudge(llm(server))
        v = judge.grade(expert[0])
        system = server.requests[0]["messages"][0]["content"]
    assert v.status == "ok" and v.passed is True and v.score == 1.0
    assert [f.criterion for f in v.findings] == CRITERIA
    assert v.judge == "openai/fake" and v.prompt_hash == hashlib.sha256(system.encode()).hexdigest()
    assert v.usage.prompt_tokens > 0 and v.usage == judge.client.usage


def test_the_llm_judge_sees_the_goal_but_not_the_verification(
    env, expert: list[Trajectory]
) -> None:
    t = cancel(expert)
    messages = LLMJudge(LLMConfig(model="openai/fake", api_base="http://127.0.0.1:9")).messages(t)
    prompt = "\n".join(m["content"] for m in messages)
    task = env.unwrapped.task_by_id(t.task_id)
    assert task.goal.instruction in messages[1]["content"]
    assert t.messages[0].text.strip() in messages[1]["content"]  # the agent's policy
    assert all(c in messages[0]["content"] for c in CRITERIA)
    assert t.verdict is not None
    for secret in (
        "state_match",
        "gold_state_hash",
        t.verdict.gold_state_hash,
        '"reward"',
        "verdict",
    ):
        assert secret not in prompt
    assert "ASSISTANT CALLS cancel_pending_order(" in prompt and "TOOL RESULT" in prompt


def test_a_malformed_reply_is_asked_again(expert: list[Trajectory]) -> None:
    replies = iter(["I think it went well.", verdict_json(passed=False)])
    with FakeOpenAIServer(lambda body: {"role": "assistant", "content": next(replies)}) as server:
        judge = LLMJudge(llm(server))
        v = judge.grade(expert[0])
        second = server.requests[1]["messages"]
    assert v.status == "ok" and v.passed is False
    assert second[-2] == {"role": "assistant", "content": "I think it went well."}
    assert "not usable" in second[-1]["content"]
    assert v.usage == judge.client.usage and judge.client.calls == 2


def test_an_inconsistent_verdict_is_asked_again(expert: list[Trajectory]) -> None:
    inconsistent = json.loads(verdict_json(passed=True))
    inconsistent["findings"][2]["passed"] = False
    replies = iter([json.dumps(inconsistent), verdict_json(passed=False)])
    with FakeOpenAIServer(lambda body: {"role": "assistant", "content": next(replies)}) as server:
        v = LLMJudge(llm(server)).grade(expert[0])
        assert '"passed" must be true' in server.requests[1]["messages"][-1]["content"]
    assert v.status == "ok" and v.passed is False


def test_never_valid_output_is_an_error_not_a_fail(expert: list[Trajectory]) -> None:
    partial = json.dumps({"passed": True, "score": 1, "findings": [], "rationale": ""})
    with FakeOpenAIServer(lambda body: {"role": "assistant", "content": partial}) as server:
        v = LLMJudge(llm(server), max_parse_attempts=2).grade(expert[0])
        assert server.stats.replies == 2
    assert v.status == "error" and v.passed is None
    assert v.error and v.error.startswith("unparseable reply") and "findings must cover" in v.error


def test_provider_faults_are_an_error_with_reason(expert: list[Trajectory]) -> None:
    faults = FaultPlan(rate=1.0, kinds=("server_error",))
    with FakeOpenAIServer(
        lambda body: {"role": "assistant", "content": verdict_json()}, faults=faults
    ) as server:
        v = LLMJudge(llm(server, max_attempts=2)).grade(expert[0])
    assert v.status == "error" and v.passed is None and v.score is None
    assert v.error and v.error.startswith("provider error") and "after up to 2 attempts" in v.error


def test_llm_judge_grades_concurrently(expert: list[Trajectory]) -> None:
    lock, seen = threading.Lock(), []

    def respond(body):
        with lock:
            seen.append(body)
        return {"role": "assistant", "content": verdict_json()}

    with FakeOpenAIServer(respond, latency_s=0.05) as server:
        graded = grade_all(LLMJudge(llm(server)), expert, concurrency=8)
        assert server.stats.max_in_flight > 1
    assert [t.key for t in graded] == [t.key for t in expert]
    assert all(t.judge and t.judge.passed for t in graded) and len(seen) == len(expert)


def test_extract_json_tolerates_prose_and_fences() -> None:
    assert extract_json('so {"a": {"b": 1}} done') == {"a": {"b": 1}}
    assert extract_json('```json\n{"x": 2}\n```') == {"x": 2}
    assert extract_json('{not json} then {"y": 3}') == {"y": 3}
    assert extract_json("[1, 2]") is None


# Calibration and filtering ---------------------------------------------------------------------


def labelled(
    base: Trajectory, n: int, verified: bool, passed: bool | None, sample: int
) -> list[Trajectory]:
    """``n`` copies of ``base`` with a chosen verified outcome and judge verdict (None: error)."""
    verdict = (
        JudgeVerdict(status="error", error="provider error: down", judge="hand", prompt_hash="h")
        if passed is None
        else JudgeVerdict(passed=passed, score=float(passed), judge="hand", prompt_hash="h")
    )
    return [
        base.model_copy(
            update={
                "reward": 1.0 if verified else 0.0,
                "judge": verdict,
                "sample_index": sample + k,
            }
        )
        for k in range(n)
    ]


@pytest.fixture
def hand_set(expert: list[Trajectory]) -> list[Trajectory]:
    base = expert[0]
    return (
        labelled(base, 3, True, True, 0)  # true accepts
        + labelled(base, 1, False, True, 10)  # false accept
        + labelled(base, 2, True, False, 20)  # false rejects
        + labelled(base, 4, False, False, 30)  # true rejects
        + labelled(base, 1, True, None, 40)  # judge error: excluded
        + [base.model_copy(update={"status": "error", "sample_index": 50, "judge": None})]
    )


def test_calibration_numbers_on_a_known_confusion_matrix(hand_set: list[Trajectory]) -> None:
    m = agreement_metrics(hand_set, resamples=500, seed=1)
    assert m["confusion"] == {
        "judge_pass_verified_pass": 3,
        "judge_pass_verified_fail": 1,
        "judge_fail_verified_pass": 2,
        "judge_fail_verified_fail": 4,
    }
    assert m["n_graded"] == 10 and m["n_excluded"] == 2 and m["n_input"] == 12
    assert m["excluded"] == {"judge error: provider error": 1, "trajectory error": 1}
    assert m["agreement"] == pytest.approx(0.7)
    assert m["kappa"] == pytest.approx(0.4)  # chance agreement (4*5 + 6*5) / 100 = 0.5
    assert m["false_accept_rate"] == pytest.approx(0.2)
    assert m["false_reject_rate"] == pytest.approx(0.4)
    for name in ("agreement", "kappa", "false_accept_rate", "false_reject_rate"):
        low, high = m[f"{name}_ci95"]
        assert low <= m[name] <= high
    assert agreement_metrics(hand_set, resamples=500, seed=1) == m  # seeded


def test_degenerate_sets_report_none(expert: list[Trajectory]) -> None:
    all_fail = labelled(expert[0], 5, False, False, 0)
    m = agreement_metrics(all_fail, resamples=200)
    assert m["agreement"] == 1.0 and m["kappa"] is None and m["kappa_ci95"] is None
    assert m["false_reject_rate"] is None and m["false_accept_rate"] == 0.0 and m["positives"] == 0
    empty = agreement_metrics([], resamples=200)
    assert empty["n_graded"] == 0 and empty["agreement"] is None and empty["agreement_ci95"] is None


def test_calibrate_grades_and_groups(expert: list[Trajectory], floor: list[Trajectory]) -> None:
    every = expert + floor
    report = calibrate(
        every, EmbeddedJudge(), groups=["e"] * len(expert) + ["f"] * len(floor), resamples=200
    )
    assert report["overall"]["agreement"] == 1.0 and report["overall"]["n_graded"] == len(every)
    assert set(report["groups"]) == {"e", "f"} and report["groups"]["f"]["false_accept_rate"] == 0.0
    assert report["judges"] == [{"judge": "embedded", "prompt_hash": EmbeddedJudge().prompt_hash}]
    by_provenance = calibrate(every, EmbeddedJudge(), resamples=100)
    assert "expert:ScriptedExpert" in by_provenance["groups"]


def test_filter_both_keeps_no_failure_and_writes_counts(
    tmp_path: Path, expert: list[Trajectory], floor: list[Trajectory]
) -> None:
    t = cancel(expert)
    amount = next(o for o in t.verdict.outputs)
    lie = replace_text(t, f"${amount}", "$1.23").model_copy(update={"sample_index": 7})
    broken = expert[1].model_copy(update={"status": "error", "sample_index": 9})
    out = tmp_path / "kept.jsonl"
    summary = filter_trajectories([*expert, *floor, lie, broken], out, "both", EmbeddedJudge())
    kept = list(read_trajectories(out))
    assert all(k.reward == 1.0 and k.judge and k.judge.passed for k in kept)
    assert len(kept) == len(expert) == summary["kept"]
    counts = json.loads(out.with_suffix(".filter.json").read_text())
    assert counts == summary and counts["policy"] == "both" and counts["judge"] == "embedded"
    assert counts["dropped"] == {
        "trajectory_error": 1,
        "verified_failure": len(floor),
        "judge_error": 0,
        "judge_fail": 1,
    }
    with pytest.raises(TrajgymError, match="other settings"):
        filter_trajectories(expert, out, "verified")


def test_filter_drops_judge_errors_with_their_reason(
    tmp_path: Path, hand_set: list[Trajectory]
) -> None:
    summary = filter_trajectories(hand_set, tmp_path / "k.jsonl", "judge")  # recorded verdicts
    assert summary["kept"] == 4 and summary["dropped"]["judge_error"] == 1
    assert summary["judge_errors"] == {"provider error": 1}
    verified = filter_trajectories(hand_set, tmp_path / "v.jsonl", "verified")
    assert verified["kept"] == 6 and verified["judge"] is None


def test_grade_file_writes_every_trajectory_and_resumes(
    tmp_path: Path, expert: list[Trajectory], floor: list[Trajectory]
) -> None:
    src, out = tmp_path / "in.jsonl", tmp_path / "graded.jsonl"
    src.write_text("".join(t.model_dump_json() + "\n" for t in expert + floor))
    counts = grade_file(src, out, make_judge(JudgeConfig()), concurrency=4)
    assert counts["graded"] == len(expert + floor) and counts["passed"] == len(expert)
    graded = list(read_trajectories(out))
    assert {t.key for t in graded} == {t.key for t in expert + floor} and all(
        t.judge for t in graded
    )
    again = grade_file(src, out, EmbeddedJudge())
    assert again["graded"] == 0 and again["skipped"] == len(expert + floor)


# The CLI ---------------------------------------------------------------------------------------


@pytest.fixture
def small_file(tmp_path: Path, expert: list[Trajectory], floor: list[Trajectory]) -> Path:
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(t.model_dump_json() + "\n" for t in expert + floor))
    return path


def test_cli_calibrate_writes_json_and_markdown(tmp_path: Path, small_file: Path) -> None:
    report = tmp_path / "cal" / "report.json"
    result = runner.invoke(
        judge_app, ["calibrate", str(small_file), "-o", str(report), "--resamples", "200"]
    )
    assert result.exit_code == 0, result.output
    assert "overall" in result.output and "mixed" in result.output
    data = json.loads(report.read_text())
    assert data["overall"]["agreement"] == 1.0 and "mixed" in data["groups"]
    assert "| overall |" in report.with_suffix(".md").read_text()


def test_cli_filter_and_grade(tmp_path: Path, small_file: Path, expert: list[Trajectory]) -> None:
    out = tmp_path / "kept.jsonl"
    result = runner.invoke(judge_app, ["filter", str(small_file), "-o", str(out), "--keep", "both"])
    assert result.exit_code == 0, result.output
    assert len(list(read_trajectories(out))) == len(expert)
    assert json.loads(out.with_suffix(".filter.json").read_text())["kept"] == len(expert)
    with FakeOpenAIServer(lambda body: {"role": "assistant", "content": verdict_json()}) as server:
        graded = tmp_path / "graded.jsonl"
        args = [
            "grade",
            str(out),
            "-o",
            str(graded),
            "--model",
            "openai/fake",
            "--api-base",
            server.base_url,
        ]
        result = runner.invoke(judge_app, args)
    assert result.exit_code == 0, result.output
    assert all(t.judge and t.judge.judge == "openai/fake" for t in read_trajectories(graded))


def test_cli_bad_input_is_a_clear_message(tmp_path: Path, small_file: Path, cli) -> None:
    lines = small_file.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([lines[0], '{"not": "a trajectory"}', *lines[1:]]) + "\n")
    for args, message in [
        (["calibrate", str(broken)], "broken.jsonl:2 is not a trajgym trajectory"),
        (
            ["filter", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl")],
            "does not exist",
        ),
        (
            [
                "grade",
                str(small_file),
                "-o",
                str(tmp_path / "g.jsonl"),
                "--config",
                str(tmp_path / "nope.yaml"),
            ],
            "does not exist",
        ),
        (
            ["filter", str(small_file), "-o", str(tmp_path / "o.jsonl"), "--keep", "all"],
            "'all' is not one of 'verified', 'judge', 'both'",
        ),
    ]:
        code, out, err = cli("judge", *args)
        assert code == 2, out + err
        assert message in " ".join(err.split()) and "Traceback" not in out + err


def test_the_shipped_judge_config_loads() -> None:
    from trajgym.config import load_config

    path = Path(__file__).parents[1] / "configs" / "judge.yaml"
    cfg = load_config(JudgeConfig, path, ["concurrency=4"])
    assert cfg.llm is not None and cfg.llm.temperature == 0.0 and cfg.concurrency == 4


def test_input_with_repeated_keys_is_refused_not_thinned(
    tmp_path: Path, expert: list[Trajectory]
) -> None:
    # The same task played by two agents: a keyed output store could hold only one of them.
    twin = expert[0].model_copy(
        update={"provenance": expert[0].provenance.model_copy(update={"kind": "student"})}
    )
    with pytest.raises(TrajgymError, match="not unique"):
        filter_trajectories([*expert, twin], tmp_path / "k.jsonl", "verified")
    assert not (tmp_path / "k.jsonl").exists()
