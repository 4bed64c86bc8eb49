"""The main job in one command: harvest with the teacher, train the student, compare them.

``trajgym run configs/quickstart.yaml`` runs its stages into one folder: harvest teacher
trajectories on the train split, SFT the student on the verified ones, optionally improve it
with GRPO in the environment (RL), evaluate the teacher, the base student, the SFT student
(and the SFT+RL student) on the held-out splits, and write a report (Markdown tables, JSON,
plot). Every stage resumes: re-running the command after a crash skips finished work (the
stores are keyed, SFT and RL restart from their checkpoints).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trajgym.records.schema import Split
from trajgym.rollouts.config import AgentSpec, GenerateConfig
from trajgym.rollouts.generate import generate
from trajgym.train.rl import RLConfig
from trajgym.train.sft import SFTConfig


class HarvestStage(BaseModel):
    """Who produces the training data, and how much."""

    model_config = ConfigDict(extra="forbid")

    teacher: AgentSpec = Field(default_factory=lambda: AgentSpec(), description="The teacher.")
    num_tasks: int = Field(240, ge=1, description="Train tasks to harvest.")
    samples_per_task: int = Field(1, ge=1, description="Episodes per task.")
    concurrency: int = Field(64, ge=1, description="Episodes in flight.")


class EvalStage(BaseModel):
    """Where and how the agents are compared."""

    model_config = ConfigDict(extra="forbid")

    splits: list[Split] = Field(["test", "ood"], description="Held-out splits.")
    num_tasks: int = Field(40, ge=1, description="Tasks per split.")
    k: int = Field(1, ge=1, description="Samples per task (pass@k, pass^k).")
    max_new_tokens: int = Field(96, ge=1, description="Student reply length limit.")
    max_steps: int = Field(12, ge=1, description="Agent steps before an episode is cut.")
    concurrency: int = Field(8, ge=1, description="Episodes in flight (= the student's batch).")
    teacher: bool = Field(True, description="Also evaluate the teacher, for reference.")


class PipelineConfig(BaseModel):
    """A whole run: one environment, one teacher, one student."""

    model_config = ConfigDict(extra="forbid")

    env: str = Field("trajgym/RetailLite-v0", description="Environment id.")
    output_dir: Path = Field(Path("runs/quickstart"), description="Everything the run writes.")
    seed: int = Field(0, description="Seed for generation and training.")
    harvest: HarvestStage = Field(default_factory=lambda: HarvestStage(), description="Stage 1.")
    sft: dict[str, Any] = Field(
        default_factory=dict, description="SFTConfig fields (data and output_dir are set here)."
    )
    rl: dict[str, Any] | None = Field(
        None, description="RLConfig fields to run GRPO after SFT (None: no RL stage)."
    )
    eval: EvalStage = Field(default_factory=lambda: EvalStage(), description="Last stage.")
    smoke: list[str] = Field(
        default_factory=list, description="Overrides (key=value) applied by --smoke."
    )

    @model_validator(mode="after")
    def _stages_are_valid(self) -> PipelineConfig:
        for stage, build in (("sft", self.sft_config), ("rl", self.rl_config)):
            check_stage(stage, build)  # fail at load time, not after the harvest
        return self

    def sft_config(self) -> SFTConfig:
        """The SFT stage's full config."""
        fields = {"seed": self.seed, **self.sft}
        fields |= {"data": [self.harvest_path], "output_dir": self.output_dir / "sft"}
        return SFTConfig.model_validate(fields)

    def rl_config(self) -> RLConfig | None:
        """The RL stage's full config: it starts from the SFT student."""
        if self.rl is None:
            return None
        sft = self.sft_config()
        start = (
            {"model": sft.model, "adapter": sft.output_dir / "adapter"}
            if sft.lora
            else {"model": str(sft.output_dir / "model")}
        )
        fields = {"seed": self.seed, "envs": [self.env], **self.rl}
        fields |= start | {"output_dir": self.output_dir / "rl"}
        return RLConfig.model_validate(fields)

    @property
    def harvest_path(self) -> Path:
        """Where the harvested trajectories go."""
        return self.output_dir / "harvest" / "trajectories.jsonl"


def check_stage(stage: str, build: Callable[[], object]) -> None:
    """Build a stage's config now; its problems become ``<stage>.<field>: <message>``."""
    try:
        build()
    except ValidationError as e:
        problems = "; ".join(
            f"{stage}.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()
        )
        raise ValueError(problems) from None


def run(config: PipelineConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every stage; returns the report, also written to the output folder."""
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    started = time.perf_counter()
    generate(_harvest_config(config), show_progress)
    timings["harvest_s"] = time.perf_counter() - started

    started = time.perf_counter()
    sft = config.sft_config()
    summary_path = sft.output_dir / "summary.json"
    if summary_path.exists():
        sft_summary = json.loads(summary_path.read_text())
    else:
        from trajgym.train.sft import train

        sft_summary = train(sft)
    timings["sft_s"] = time.perf_counter() - started

    rl, rl_summary = config.rl_config(), None
    if rl is not None:
        started = time.perf_counter()
        summary_path = rl.output_dir / "summary.json"
        if summary_path.exists():
            rl_summary = json.loads(summary_path.read_text())
        else:
            from trajgym.train.rl import train as train_rl

            rl_summary = train_rl(rl)
        timings["rl_s"] = time.perf_counter() - started

    results: dict[str, dict[str, Any]] = {}
    for name, agent in _agents(config, sft, rl).items():
        for split in config.eval.splits:
            started = time.perf_counter()
            results.setdefault(name, {})[split] = _evaluate(
                config, agent, name, split, show_progress
            )
            timings[f"eval_{name}_{split}_s"] = time.perf_counter() - started
    report = {
        "env": config.env,
        "k": config.eval.k,
        "harvest": _harvest_report(config.harvest_path),
        "sft": {k: sft_summary.get(k) for k in ("steps", "tokens", "examples", "tokens_per_s")},
        "rl": _rl_report(rl_summary),
        "results": results,
        "timings": {k: round(v, 1) for k, v in timings.items()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(render_report(report))
    plot_results(results, out / "success.png")
    return report


def _harvest_config(config: PipelineConfig) -> GenerateConfig:
    h = config.harvest
    return GenerateConfig(
        envs=[config.env],
        split="train",
        num_tasks=h.num_tasks,
        samples_per_task=h.samples_per_task,
        teacher=h.teacher,
        seed=config.seed,
        output=config.harvest_path,
        concurrency=h.concurrency,
    )


def _agents(config: PipelineConfig, sft: SFTConfig, rl: RLConfig | None) -> dict[str, AgentSpec]:
    """The teacher (optionally), the base student, the SFT student, the SFT+RL student."""
    tokens = config.eval.max_new_tokens
    base = AgentSpec(kind="student", student=sft.model, max_new_tokens=tokens)
    if sft.lora:
        trained = base.model_copy(update={"adapter": str(sft.output_dir / "adapter")})
    else:
        trained = base.model_copy(update={"student": str(sft.output_dir / "model")})
    agents = {"base student": base, "sft student": trained}
    if rl is not None:
        final = rl.output_dir / ("adapter" if rl.lora or rl.adapter else "model")
        agents["rl student"] = (
            base.model_copy(update={"student": rl.model, "adapter": str(final)})
            if rl.lora or rl.adapter
            else base.model_copy(update={"student": str(final)})
        )
    if config.eval.teacher:
        agents = {"teacher": config.harvest.teacher, **agents}
    return agents


def _evaluate(
    config: PipelineConfig, agent: AgentSpec, name: str, split: Split, show_progress: bool
) -> dict[str, Any]:
    from trajgym.records.store import read_trajectories
    from trajgym.train.evaluate import summarize

    e = config.eval
    output = config.output_dir / "eval" / f"{name.replace(' ', '-')}-{split}.jsonl"
    generate(
        GenerateConfig(
            envs=[config.env],
            split=split,
            num_tasks=e.num_tasks,
            samples_per_task=e.k,
            teacher=agent,
            seed=config.seed,
            output=output,
            concurrency=e.concurrency,
            max_steps=e.max_steps,
        ),
        show_progress,
    )
    metrics = summarize(read_trajectories(output), e.k)
    output.with_suffix(".eval.json").write_text(json.dumps(metrics, indent=1))
    return metrics


def _harvest_report(path: Path) -> dict[str, int]:
    """Counted from the store, so that a resumed run reports what a fresh one would."""
    from trajgym.records.store import read_trajectories

    stored = list(read_trajectories(path))
    return {"episodes": len(stored), "successes": sum(t.success for t in stored)}


def _rl_report(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    if summary is None or not summary.get("history"):
        return None
    history = summary["history"]
    return {
        "steps": summary["steps"],
        "episodes": sum(h["episodes"] for h in history),
        "first_reward": history[0]["reward"],
        "last_reward": history[-1]["reward"],
    }


# Report -------------------------------------------------------------------------------------


def render_report(report: dict[str, Any]) -> str:
    """The report as Markdown: one row per agent and split."""
    results = report["results"]
    k = next(
        (
            key.split("@")[1]
            for r in results.values()
            for m in r.values()
            for key in m
            if "@" in key
        ),
        "1",
    )
    lines = [
        f"# trajgym run: {report['env']}",
        "",
        f"Harvested {report['harvest']['episodes']} teacher episodes "
        f"({report['harvest']['successes']} verified); SFT: {report['sft']['steps']} steps over "
        f"{report['sft']['examples']} conversations, {report['sft']['tokens']} tokens "
        f"({report['sft']['tokens_per_s']} tokens/s)."
        + (
            f" RL: {report['rl']['steps']} GRPO steps over {report['rl']['episodes']} episodes, "
            f"mean reward {report['rl']['first_reward']:.2f} -> {report['rl']['last_reward']:.2f}."
            if report.get("rl")
            else ""
        ),
        "",
        f"| agent | split | tasks | success | 95% CI | pass@{k} | pass^{k} | turns | tool calls "
        "| invalid calls | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for agent, by_split in results.items():
        for split, m in by_split.items():
            low, high = m["success_ci95"]
            lines.append(
                f"| {agent} | {split} | {m['tasks']} | {m['success_rate']:.1%} | "
                f"[{low:.1%}, {high:.1%}] | {m[f'pass@{k}']:.1%} | {m[f'pass^{k}']:.1%} | "
                f"{m['avg_turns']:.1f} | {m['avg_tool_calls']:.1f} | "
                f"{m['avg_invalid_tool_calls']:.1f} | {m['errors']} |"
            )
    lines += ["", "Success by task family:", "", *family_table(results, "agent", "split")]
    lines += [
        "",
        "Seconds per stage: " + ", ".join(f"{k} {v}" for k, v in report["timings"].items()),
    ]
    lines += ["", "![success](success.png)", ""]
    return "\n".join(lines)


def family_table(results: dict[str, dict[str, Any]], who: str, where: str) -> list[str]:
    """Markdown rows of success by task family, for every agent and place it was evaluated."""
    lines = [f"| {who} | {where} | family | episodes | success |", "|---|---|---|---|---|"]
    for agent, by_place in results.items():
        for place, m in by_place.items():
            for family, row in m["by_family"].items():
                lines.append(
                    f"| {agent} | {place} | {family} | {row['episodes']} | "
                    f"{row['success_rate']:.1%} |"
                )
    return lines


def plot_results(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Success rate per agent and split, with the 95% intervals as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents = list(results)
    splits = sorted({s for r in results.values() for s in r})
    width = 0.8 / max(1, len(agents))
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, agent in enumerate(agents):
        xs: list[float] = []
        ys: list[float] = []
        errs: list[list[float]] = [[], []]
        for j, split in enumerate(splits):
            m = results[agent].get(split)
            if m is None:
                continue
            low, high = m["success_ci95"]
            xs.append(j + i * width)
            ys.append(m["success_rate"])
            errs[0].append(max(0.0, m["success_rate"] - low))
            errs[1].append(max(0.0, high - m["success_rate"]))
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=agent)
    ax.set_xticks([j + width * (len(agents) - 1) / 2 for j in range(len(splits))], splits)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
