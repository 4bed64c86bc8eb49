"""How each source of ``trajgym compare`` makes its student at one budget, and what it cost.

Every student starts from the same base and sees ``budget`` trajectories: the teacher's
(``teacher``; ``logit_kd`` also matches the white-box teacher's distributions on them), the
student's own kept episodes (``self``), the student's episodes labelled by the teacher
(``on_policy``; ``dagger`` aggregates demonstrations and rounds of labels), or its own
episodes in the environment scored token by token by the white-box teacher (``opd``);
``sft+rl`` is the teacher student improved by GRPO over ``budget`` more episodes. Each
student's compute is counted the same way for all: the teacher's turns generated, the tokens
a white-box teacher scored, and the tokens the training passes ran over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trajgym.experiments.compare_config import CompareConfig, Source
from trajgym.experiments.stages import student, train_once
from trajgym.records.schema import Trajectory
from trajgym.records.store import read_trajectories
from trajgym.rollouts.onpolicy import label_file
from trajgym.rollouts.rationale import strip_file
from trajgym.rollouts.selfgen import SelfGenConfig, self_generate
from trajgym.train.common import TrainedModel
from trajgym.train.rl import RLConfig
from trajgym.train.sft import SFTConfig


@dataclass(frozen=True)
class Pools:
    """The data every budget draws from, made once for the largest budget."""

    teacher: Path  # kept teacher trajectories, as the teacher wrote them (its plans said)
    teacher_rollouts: Path  # every teacher episode played, kept or not
    self_: Path | None = None  # the generator's kept episodes
    labels: Path | None = None  # the generator's episodes, labelled by the teacher
    first_free_task: int = 0  # train tasks from here on were played by nobody yet

    @property
    def outputs(self) -> Path:
        """The teacher's trajectories with its stated plans stripped: output imitation's data.

        Tool calls and final answers are byte-identical to the teacher's; only the sentences
        in which it says what it will do and why are gone (``rationale`` keeps them).
        """
        stripped = self.teacher.with_name("teacher.outputs.jsonl")
        strip_file(self.teacher, stripped)
        return stripped


@dataclass
class Student:
    """A trained student, the data it trained on (SFT sources), and what it cost."""

    model: TrainedModel
    data: Path | None
    compute: dict[str, int] = field(default_factory=dict)


def make_student(config: CompareConfig, source: Source, budget: int, pools: Pools) -> Student:
    """Train (or find, if trained before) ``source``'s student at ``budget`` trajectories."""
    folder = f"b{budget}/{source}"
    data = config.output_dir / "data" / f"b{budget}"
    data.mkdir(parents=True, exist_ok=True)
    if source == "rationale":  # the teacher's trajectories, its stated plans kept
        train_file = _first(pools.teacher, data / "rationale.jsonl", budget)
        sft = config.sft_config(folder, train_file)
        compute = {"teacher_turns": _teacher_turns(pools.teacher_rollouts, train_file)}
        return Student(sft.trained(), train_file, compute | _sft_cost(_sft(sft)))
    if source in ("teacher", "logit_kd"):
        train_file = _first(pools.outputs, data / "teacher.jsonl", budget)
        sft = config.sft_config(folder, train_file, distill=source == "logit_kd")
        done = _sft(sft)
        compute = {"teacher_turns": _teacher_turns(pools.teacher_rollouts, train_file)}
        if source == "logit_kd":
            compute["teacher_scored_tokens"] = int(done["loss_tokens"])
        return Student(sft.trained(), train_file, compute | _sft_cost(done))
    if source in ("self", "on_policy"):
        pool = pools.self_ if source == "self" else pools.labels
        assert pool is not None  # made by run_compare whenever these sources are asked for
        train_file = _first(pool, data / f"{source}.jsonl", budget)
        sft = config.sft_config(folder, train_file)
        compute = {"teacher_turns": _label_count(train_file)}
        return Student(sft.trained(), train_file, compute | _sft_cost(_sft(sft)))
    if source == "dagger":
        return _dagger(config, budget, pools)
    base = config.sft_config("base", Path()).model
    if source == "opd":
        rl = config.rl_config(folder, base, budget, with_teacher=True)
        done = _rl(rl)
        compute = {"teacher_scored_tokens": sum(h["teacher_tokens"] for h in done["history"])}
        return Student(rl.trained(), None, compute | _rl_cost(done))
    if source == "gad":
        return _gad(config, folder, base, budget)
    start = make_student(config, "teacher", budget, pools)  # sft+rl: the teacher student, on
    rl = config.rl_config(folder, start.model, budget, with_teacher=False)
    cost = _rl_cost(_rl(rl))
    compute = {
        "teacher_turns": start.compute["teacher_turns"],
        "trained_tokens": start.compute["trained_tokens"] + cost["trained_tokens"],
        "episodes": cost["episodes"],
    }
    return Student(rl.trained(), start.data, compute)


def _gad(config: CompareConfig, folder: str, base: str, budget: int) -> Student:
    """GRPO whose per-turn reward is a discriminator's score (black-box on-policy distillation)."""
    from trajgym.train.gad import GAD, GADConfig

    rl = config.rl_config(folder, base, budget, with_teacher=False)
    rl = rl.model_copy(
        update={"rewards": rl.rewards.model_copy(update={"success": config.gad.success_coef})}
    )
    settings = config.gad.discriminator
    if "model" not in settings.model_fields_set:
        settings = settings.model_copy(update={"model": base})
    gad = GAD(GADConfig(teacher=config.teacher, discriminator=settings))
    steps: list[dict[str, float]] = []

    def run() -> Any:
        from trajgym.train.rl import train

        def rewards(episodes: Any) -> list[list[float]]:
            scores = gad(episodes)
            steps.append(dict(gad.stats))
            return scores

        return train(rl, turn_rewards=rewards) | {"gad": steps}

    done = dict(train_once(rl.output_dir, run))
    history = done.get("gad", [])
    compute = {
        "discriminator_pairs": sum(int(h.get("d_pairs", 0)) for h in history),
        "discriminator_steps": sum(int(h.get("d_steps", 0)) for h in history),
    }
    return Student(rl.trained(), None, compute | _rl_cost(done))


# DAgger -------------------------------------------------------------------------------------


def dagger_plan(budget: int, rounds: int, demo_share: float) -> tuple[int, list[int]]:
    """How many demonstrations, and how many labelled episodes each round, make ``budget``."""
    demos = round(budget * demo_share)
    rest = budget - demos
    per_round = [rest // rounds + (1 if r < rest % rounds else 0) for r in range(rounds)]
    return demos, per_round


def _dagger(config: CompareConfig, budget: int, pools: Pools) -> Student:
    """DAgger's rounds: play, label, retrain on everything so far.

    Round 0 trains on the demonstrations; each round the latest student plays fresh tasks,
    the teacher labels every state it reached, and a student is trained (from the base) on
    all the data so far: the demonstrations and every round's labels.
    """
    d = config.dagger
    demos, per_round = dagger_plan(budget, d.rounds, d.demo_share)
    data = config.output_dir / "data" / f"b{budget}" / "dagger"
    data.mkdir(parents=True, exist_ok=True)
    aggregate = [_first(pools.teacher, data / "round-0.jsonl", demos)]
    turns = _teacher_turns(pools.teacher_rollouts, aggregate[0])
    model = TrainedModel(student=config.sft_config("base", Path()).model)
    trained_tokens = 0
    if demos:  # round 0 is the teacher student at ``demos``: the same data, settings and seed
        first = make_student(config, "teacher", demos, pools)
        trained_tokens += first.compute["trained_tokens"]
        model = first.model
    first_task = pools.first_free_task  # past the tasks the other sources played
    for r, n in enumerate(per_round, start=1):
        if n == 0:
            continue
        played = _play(config, model, data / f"round-{r}.played.jsonl", first_task, n)
        first_task += n
        labels = data / f"round-{r}.jsonl"
        label_file(played, labels, config.teacher, n, show_progress=False)
        aggregate.append(labels)
        turns += _label_count(labels)
        everything = _concatenate(aggregate, data / f"round-{r}.all.jsonl")
        sft = config.sft_config(f"b{budget}/dagger/round-{r}", everything)
        trained_tokens += _sft_cost(_sft(sft))["trained_tokens"]
        model = sft.trained()
    final = _concatenate(aggregate, data / "all.jsonl")
    compute = {"teacher_turns": turns, "trained_tokens": trained_tokens}
    return Student(model, final, compute)


def _play(config: CompareConfig, model: TrainedModel, output: Path, first: int, n: int) -> Path:
    """``n`` episodes of ``model`` on train tasks from ``first``, kept or not (resumable)."""
    r = config.rollouts
    play = SelfGenConfig(
        env=config.env,
        agent=student(model, r.max_new_tokens, r.temperature),
        samples_per_task=1,
        first_task=first,
        max_tasks=n,
        tasks_per_round=n,
        keep="verified",
        provenance=None,
        seed=config.seed,
        output=output,
        concurrency=r.concurrency,
        max_turns=r.max_turns,
    )
    self_generate(play, show_progress=False)
    return play.rollouts_path


# Helpers ------------------------------------------------------------------------------------


def _sft(config: SFTConfig) -> dict[str, Any]:
    def run() -> Any:
        from trajgym.train.sft import train

        return train(config)

    return dict(train_once(config.output_dir, run))


def _rl(config: RLConfig) -> dict[str, Any]:
    def run() -> Any:
        from trajgym.train.rl import train

        return train(config)

    return dict(train_once(config.output_dir, run))


def _sft_cost(summary: dict[str, Any]) -> dict[str, int]:
    return {"trained_tokens": int(summary["tokens"])}


def _rl_cost(summary: dict[str, Any]) -> dict[str, int]:
    history = summary["history"]
    return {
        "trained_tokens": sum(int(h["sequence_tokens"]) for h in history),
        "episodes": sum(int(h["episodes"]) for h in history),
    }


def _ok(path: Path) -> list[Trajectory]:
    return [t for t in read_trajectories(path) if t.status == "ok"]


def _first(pool: Path, target: Path, n: int) -> Path:
    """Write the pool's first ``n`` usable trajectories to ``target`` (once)."""
    if not target.exists():
        kept = _ok(pool)[:n]
        target.write_text("".join(t.model_dump_json() + "\n" for t in kept))
    return target


def _concatenate(parts: list[Path], target: Path) -> Path:
    target.write_text("".join(p.read_text() for p in parts))
    return target


def _teacher_turns(rollouts: Path, kept: Path) -> int:
    """The teacher's turns over every episode played until the last one ``kept`` holds."""
    keys = {t.key for t in read_trajectories(kept)}
    turns = 0
    for t in read_trajectories(rollouts):
        if not keys:
            break
        turns += sum(m.role == "assistant" for m in t.messages)
        keys.discard(t.key)
    return turns


def _label_count(path: Path) -> int:
    """Teacher calls that labelled: one per student turn of each labelled trajectory."""
    return sum(len(t.labels or ()) for t in read_trajectories(path))
