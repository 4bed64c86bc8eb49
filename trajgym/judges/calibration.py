"""Apply a judge to trajectory files: grade them, calibrate it against verification, filter.

Calibration treats the environment's verification as ground truth (positive = verified
success) and asks how often the judge agrees: agreement, Cohen's kappa, the false-accept
rate (judge passes a verified failure) and the false-reject rate (judge fails a verified
success), each with a 95% bootstrap interval over trajectories. Trajectories that errored,
and judge errors, are excluded and counted with their reasons, never scored.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from trajgym.errors import TrajgymError
from trajgym.judges.judge import EmbeddedJudge, Judge
from trajgym.judges.llm_judge import LLMJudge
from trajgym.llm.cassette import episode_scope
from trajgym.llm.client import LLMConfig
from trajgym.records.schema import JudgeVerdict, Trajectory
from trajgym.records.store import TrajectoryStore, read_input

Keep = Literal["verified", "judge", "both"]


class JudgeConfig(BaseModel):
    """Which judge grades, and how (configs/judge.yaml)."""

    model_config = ConfigDict(extra="forbid")

    llm: LLMConfig | None = Field(None, description="The LLM judge's model; unset: embedded.")
    max_parse_attempts: int = Field(
        3, ge=1, description="Replies asked for per trajectory until one parses as the schema."
    )
    concurrency: int = Field(16, ge=1, le=1024, description="Trajectories graded at once.")


def make_judge(config: JudgeConfig) -> Judge:
    """The judge a config describes: the LLM judge if it names a model, else the embedded one."""
    if config.llm is None:
        return EmbeddedJudge()
    return LLMJudge(config.llm, max_parse_attempts=config.max_parse_attempts)


def load_file(path: str | Path) -> list[Trajectory]:
    """Every trajectory of a JSONL file; a missing or empty file is a user error."""
    return read_input(path)


# Grading ---------------------------------------------------------------------------------------


def needs_grading(t: Trajectory, judge: Judge) -> bool:
    """Whether ``t`` lacks a verdict from this very judge (same name, same instructions)."""
    v = t.judge
    return v is None or v.judge != judge.name or v.prompt_hash != judge.prompt_hash


def grade_all(
    judge: Judge,
    trajectories: Sequence[Trajectory],
    concurrency: int = 16,
    on_graded: Callable[[Trajectory], object] | None = None,
    show_progress: bool = False,
) -> list[Trajectory]:
    """Grade trajectories on ``concurrency`` threads; graded copies, in input order.

    ``on_graded`` sees each copy as soon as it is graded (to append it to a store).
    """
    graded: list[Trajectory | None] = [None] * len(trajectories)
    tally: Counter[str] = Counter()
    progress = Progress(
        TextColumn("[bold]judge"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        disable=not show_progress,
    )
    with progress, ThreadPoolExecutor(max_workers=concurrency) as pool:
        bar = progress.add_task("trajectories", total=len(trajectories), stats="")
        futures = {pool.submit(_grade, judge, t): i for i, t in enumerate(trajectories)}
        for future in as_completed(futures):
            i = futures[future]
            verdict = future.result()  # a bug in a judge, not a provider fault: stop loudly
            t = graded[i] = trajectories[i].model_copy(update={"judge": verdict})
            if on_graded is not None:
                on_graded(t)
            tally[_outcome(verdict)] += 1
            stats = "  ".join(f"{k} {n}" for k, n in sorted(tally.items()))
            progress.update(bar, advance=1, stats=stats)
    return [t for t in graded if t is not None]


def grade_file(
    input: str | Path,
    output: str | Path,
    judge: Judge,
    concurrency: int = 16,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Write every trajectory of ``input`` with its verdict to ``output``; resumable.

    Keys already in ``output`` are skipped, so re-running after a crash grades only the rest.
    """
    trajectories = load_file(input)
    require_unique_keys(trajectories, str(input))
    with TrajectoryStore(output) as store:
        todo = [t for t in trajectories if t.key not in store]
        graded = grade_all(judge, todo, concurrency, store.append, show_progress)
    outcomes = Counter(_outcome(t.judge) for t in graded if t.judge is not None)
    cost = sum(t.judge.usage.cost_usd for t in graded if t.judge is not None)
    return {
        "input": len(trajectories),
        "skipped": len(trajectories) - len(todo),
        "graded": len(graded),
        "passed": outcomes["pass"],
        "failed": outcomes["fail"],
        "errors": outcomes["error"],
        "cost_usd": cost,
        "judge": judge.name,
        "prompt_hash": judge.prompt_hash,
    }


def _grade(judge: Judge, t: Trajectory) -> JudgeVerdict:
    """Grade in the trajectory's cassette scope, so that recorded grades replay in order."""
    with episode_scope(t.key, "judge"):
        return judge.grade(t)


def _outcome(v: JudgeVerdict) -> str:
    return "error" if v.status == "error" else "pass" if v.passed else "fail"


def _grade_missing(
    trajectories: Sequence[Trajectory],
    judge: Judge | None,
    want: Callable[[Trajectory], bool],
    concurrency: int,
    show_progress: bool,
) -> list[Trajectory]:
    """``trajectories`` with a verdict from ``judge`` wherever ``want`` asks for one."""
    if judge is None:
        return list(trajectories)
    todo = [i for i, t in enumerate(trajectories) if want(t) and needs_grading(t, judge)]
    graded = grade_all(judge, [trajectories[i] for i in todo], concurrency, None, show_progress)
    result = list(trajectories)
    for i, t in zip(todo, graded, strict=True):
        result[i] = t
    return result


def error_reason(v: JudgeVerdict) -> str:
    """A judge error's category, for counting: the text before its first colon."""
    return (v.error or "unknown").split(":", 1)[0]


# Calibration -----------------------------------------------------------------------------------


def provenance_label(t: Trajectory) -> str:
    """A group label from who produced ``t``: kind:agent[:model]."""
    p = t.provenance
    return ":".join(x for x in (p.kind, p.agent, p.model) if x)


def calibrate(
    trajectories: Sequence[Trajectory],
    judge: Judge | None = None,
    *,
    groups: Sequence[str] | None = None,
    concurrency: int = 16,
    resamples: int = 2000,
    seed: int = 0,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Agreement of a judge with verification, overall and per group.

    Args:
        trajectories: Trajectories with their verification (and maybe a recorded verdict).
        judge: Grades each trajectory lacking its verdict; None uses recorded verdicts only.
        groups: A label per trajectory (its source file, say); default: its provenance.
        concurrency: Trajectories graded at once.
        resamples: Bootstrap resamples for the 95% intervals.
        seed: Seed of the bootstrap.
        show_progress: Show a progress bar while grading.
    """
    if groups is not None and len(groups) != len(trajectories):
        raise ValueError("groups must give one label per trajectory")
    labels = list(groups) if groups is not None else [provenance_label(t) for t in trajectories]
    every = _grade_missing(
        trajectories, judge, lambda t: t.status == "ok", concurrency, show_progress
    )
    by_group: dict[str, list[Trajectory]] = defaultdict(list)
    for label, t in zip(labels, every, strict=True):
        by_group[label].append(t)
    return {
        "judges": _judges_used(every),
        "resamples": resamples,
        "seed": seed,
        "overall": agreement_metrics(every, resamples, seed),
        "groups": {g: agreement_metrics(ts, resamples, seed) for g, ts in sorted(by_group.items())},
    }


def _judges_used(trajectories: Iterable[Trajectory]) -> list[dict[str, str]]:
    used = {(t.judge.judge, t.judge.prompt_hash) for t in trajectories if t.judge is not None}
    return [{"judge": j, "prompt_hash": h} for j, h in sorted(used)]


def agreement_metrics(
    trajectories: Sequence[Trajectory], resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Confusion matrix, agreement, kappa, false-accept and false-reject rates with 95% CIs.

    A rate that is undefined (no verified failures for the false-accept rate, kappa when
    chance agreement is 1) is None rather than a number.
    """
    excluded: Counter[str] = Counter()
    judged, verified = [], []
    for t in trajectories:
        if t.status == "error":
            excluded["trajectory error"] += 1
        elif t.judge is None:
            excluded["not judged"] += 1
        elif t.judge.status == "error":
            excluded[f"judge error: {error_reason(t.judge)}"] += 1
        else:
            judged.append(bool(t.judge.passed))
            verified.append(t.success)
    j, v = np.array(judged, dtype=bool), np.array(verified, dtype=bool)
    point = _rates(j[None, :], v[None, :])
    intervals = _bootstrap(j, v, resamples, seed)
    tp, fp = int((j & v).sum()), int((j & ~v).sum())
    fn, tn = int((~j & v).sum()), int((~j & ~v).sum())
    metrics: dict[str, Any] = {
        "n_input": len(trajectories),
        "n_graded": len(judged),
        "n_excluded": sum(excluded.values()),
        "excluded": dict(sorted(excluded.items())),
        "positives": tp + fn,
        "negatives": fp + tn,
        "confusion": {
            "judge_pass_verified_pass": tp,
            "judge_pass_verified_fail": fp,
            "judge_fail_verified_pass": fn,
            "judge_fail_verified_fail": tn,
        },
    }
    for name in _RATES:
        metrics[name] = _number(point[name][0]) if len(judged) else None
        metrics[f"{name}_ci95"] = intervals[name]
    return metrics


_RATES = ("agreement", "kappa", "false_accept_rate", "false_reject_rate")


def _rates(j: np.ndarray, v: np.ndarray) -> dict[str, np.ndarray]:
    """Each rate for every row of boolean (judge, verified) matrices; nan where undefined."""
    n = j.shape[1]
    tp, fp = (j & v).sum(1), (j & ~v).sum(1)
    fn, tn = (~j & v).sum(1), (~j & ~v).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        observed = (tp + tn) / n
        chance = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
        kappa = np.where(np.isclose(chance, 1.0), np.nan, (observed - chance) / (1.0 - chance))
        return {
            "agreement": observed,
            "kappa": kappa,
            "false_accept_rate": fp / (fp + tn),
            "false_reject_rate": fn / (tp + fn),
        }


def _bootstrap(
    j: np.ndarray, v: np.ndarray, resamples: int, seed: int
) -> dict[str, list[float] | None]:
    """95% percentile intervals, resampling trajectories; None where no resample defines one."""
    samples: dict[str, list[np.ndarray]] = {name: [] for name in _RATES}
    n = len(j)
    if n:
        rng = np.random.default_rng(seed)
        batch = max(1, 4_000_000 // n)  # keeps the index matrix to a few tens of MB
        for start in range(0, resamples, batch):
            idx = rng.integers(0, n, size=(min(batch, resamples - start), n))
            for name, values in _rates(j[idx], v[idx]).items():
                samples[name].append(values)
    intervals: dict[str, list[float] | None] = {}
    for name, chunks in samples.items():
        values = np.concatenate(chunks) if chunks else np.array([])
        values = values[np.isfinite(values)]
        low, high = np.percentile(values, [2.5, 97.5]) if len(values) else (None, None)
        intervals[name] = None if low is None else [_number(low), _number(high)]
    return intervals


def _number(x: Any) -> Any:
    value = float(x)
    return None if not np.isfinite(value) else round(value, 4)


# Filtering -------------------------------------------------------------------------------------


def filter_trajectories(
    trajectories: Sequence[Trajectory],
    output: str | Path,
    keep: Keep,
    judge: Judge | None = None,
    concurrency: int = 16,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Keep the verified, the judge-passed, or both; write them and ``<output>.filter.json``.

    With ``judge`` None the recorded verdicts are used. When the policy involves the judge, a
    judge error drops the trajectory (counted apart, with its reason), never passes it. An
    existing output is resumed (its trajectories are not graded again) if it was written
    under the same policy and judge.
    """
    output = Path(output)
    require_unique_keys(trajectories, "the input")
    uses_judge = keep != "verified"
    summary: dict[str, Any] = {
        "policy": keep,
        "judge": judge.name if judge and uses_judge else None,
        "prompt_hash": judge.prompt_hash if judge and uses_judge else None,
    }
    _check_resumable(output, summary)
    dropped: Counter[str] = Counter()
    judge_errors: Counter[str] = Counter()
    with TrajectoryStore(output) as store:
        fresh = [t for t in trajectories if t.key not in store]

        def wants(t: Trajectory) -> bool:
            return t.status == "ok" and (keep == "judge" or (keep == "both" and t.success))

        graded = _grade_missing(
            fresh, judge if uses_judge else None, wants, concurrency, show_progress
        )
        for t in graded:
            reason = drop_reason(t, keep)
            if reason == "judge_error":
                judge_errors[error_reason(t.judge) if t.judge else "not judged"] += 1
            if reason:
                dropped[reason] += 1
            else:
                store.append(t)
        kept = len(trajectories) - sum(dropped.values())
    summary |= {
        "recorded_judges": _judges_used(graded) if uses_judge and judge is None else [],
        "input": len(trajectories),
        "kept": kept,
        "already_in_output": len(trajectories) - len(fresh),
        "dropped": {r: dropped[r] for r in DROP_REASONS},
        "judge_errors": dict(sorted(judge_errors.items())),
    }
    output.with_suffix(".filter.json").write_text(json.dumps(summary, indent=1))
    return summary


def require_unique_keys(trajectories: Sequence[Trajectory], source: str) -> None:
    """Refuse input a keyed store would silently thin out: one record per (env, task, sample)."""
    counts = Counter(t.key for t in trajectories)
    repeated = {key: n for key, n in counts.items() if n > 1}
    if repeated:
        key, n = next(iter(repeated.items()))
        raise TrajgymError(
            f"{source} holds {sum(repeated.values())} trajectories whose (env, task, sample) key "
            f"is not unique (e.g. {key} x{n}: the same tasks played by several agents?). An "
            "output store keeps one trajectory per key, so grade or filter each run's file "
            "separately."
        )


def _check_resumable(output: Path, settings: dict[str, Any]) -> None:
    previous = output.with_suffix(".filter.json")
    if not output.exists() or not previous.exists():
        return
    try:
        before = json.loads(previous.read_text())
    except json.JSONDecodeError:
        before = {}
    if any(before.get(k) != v for k, v in settings.items()):
        raise TrajgymError(
            f"'{output}' was filtered with other settings ({previous}); "
            "remove it or choose another output."
        )


DROP_REASONS = ("trajectory_error", "verified_failure", "judge_error", "judge_fail")


def drop_reason(t: Trajectory, keep: Keep) -> str | None:
    """Why ``t`` is dropped under ``keep`` (the first reason that applies), or None.

    The one keep rule, shared by ``judge filter`` and self-generation.
    """
    if t.status == "error":
        return "trajectory_error"
    if keep in ("verified", "both") and not t.success:
        return "verified_failure"
    if keep in ("judge", "both"):
        if t.judge is None or t.judge.status == "error":
            return "judge_error"
        if not t.judge.passed:
            return "judge_fail"
    return None
