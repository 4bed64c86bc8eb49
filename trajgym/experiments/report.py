"""Reports of the main job and of comparisons: Markdown tables, data statistics, the plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trajgym.experiments.stages import Results
from trajgym.records.store import read_trajectories

if TYPE_CHECKING:
    from trajgym.train.sft import SFTConfig


def render_run_report(
    report: dict[str, Any], results: Results, failures: Sequence[str] = ()
) -> str:
    """The main job's report as Markdown: one row per agent and split."""
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
        *results_rows(results, ("agent", "split"), with_pass_at_k=True),
    ]
    lines += ["", "Success by task family:", "", *family_table(results, "agent", "split")]
    if failures:
        lines += ["", "What went wrong, per family (each failed episode's first reason):", ""]
        lines += ["| agent | split | family | failed | why (episodes) |", "|---|---|---|---|---|"]
        lines += failures
    lines += [
        "",
        "Seconds per stage: " + ", ".join(f"{k} {v}" for k, v in report["timings"].items()),
    ]
    lines += ["", "![success](success.png)", ""]
    return "\n".join(lines)


def results_rows(results: Results, names: tuple[str, str], with_pass_at_k: bool) -> list[str]:
    """A Markdown table: one row per agent and place, success with its 95% CI."""
    k = next((m.k for by in results.values() for m in by.values()), 1)
    passes = ([f"pass@{k}"] if with_pass_at_k else []) + [f"pass^{k}"]
    columns = [*names, "tasks", "success", "95% CI", *passes, "turns", "tool calls"]
    columns += ["invalid calls", "errors"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for agent, by_place in results.items():
        for place, m in by_place.items():
            low, high = m.success_ci95
            rates = ([m.pass_at_k] if with_pass_at_k else []) + [m.pass_hat_k]
            cells = [agent, place, str(m.tasks), f"{m.success_rate:.1%}"]
            cells += [f"[{low:.1%}, {high:.1%}]", *(f"{r:.1%}" for r in rates)]
            cells += [f"{m.avg_turns:.1f}", f"{m.avg_tool_calls:.1f}"]
            cells += [f"{m.avg_invalid_tool_calls:.1f}", str(m.errors)]
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def family_table(results: Results, who: str, where: str) -> list[str]:
    """Markdown rows of success by task family, for every agent and place it was evaluated."""
    lines = [f"| {who} | {where} | family | episodes | success |", "|---|---|---|---|---|"]
    for agent, by_place in results.items():
        for place, m in by_place.items():
            for family, row in m.by_family.items():
                lines.append(
                    f"| {agent} | {place} | {family} | {row.episodes} | {row.success_rate:.1%} |"
                )
    return lines


def plot_results(results: Results, path: Path) -> None:
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
            low, high = m.success_ci95
            xs.append(j + i * width)
            ys.append(m.success_rate)
            errs[0].append(max(0.0, m.success_rate - low))
            errs[1].append(max(0.0, high - m.success_rate))
        ax.bar(xs, ys, width, yerr=errs, capsize=3, label=agent)
    ax.set_xticks([j + width * (len(agents) - 1) / 2 for j in range(len(splits))], splits)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def data_statistics(sft: SFTConfig, generated: Path, tokenizer_path: str) -> dict[str, Any]:
    """What a source's training data holds, and what producing it took.

    Turns and tool calls count what carries loss: for on-policy data, the teacher's labels
    where the student disagreed with it and the student's own turns where it agreed.
    """
    from transformers import AutoTokenizer

    from trajgym.rollouts.onpolicy import training_conversations
    from trajgym.train.sft import load_examples

    trajectories = [t for path in sft.data for t in read_trajectories(path)]
    turns = calls = sequences = 0
    tool_sequences: set[tuple[str, ...]] = set()
    for t in trajectories:
        conversations = list(training_conversations(t)) if t.labels else [(list(t.messages), None)]
        names: list[str] = []
        for messages, trained in conversations:
            sequences += 1
            for i, m in enumerate(messages):
                if m.role == "assistant" and (trained is None or i in trained):
                    turns += 1
                    calls += len(m.tool_calls or ())
                    names += [c.function.name for c in m.tool_calls or ()]
        tool_sequences.add(tuple(names))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    examples = load_examples(sft, tokenizer)
    played = list(read_trajectories(generated))
    usage = [t.usage + t.user_usage for t in played]
    n = max(1, len(trajectories))
    return {
        "trajectories": len(trajectories),
        "sequences": sequences,
        "turns_per_trajectory": round(turns / n, 2),
        "tool_calls_per_trajectory": round(calls / n, 2),
        "distinct_tool_sequences": len(tool_sequences),
        "tokens": sum(len(ids) for ids, _ in examples),
        "trained_tokens": sum(sum(1 for y in labels if y != -100) for _, labels in examples),
        "episodes_generated": len(played),
        "generated_success_rate": round(sum(t.success for t in played) / max(1, len(played)), 3),
        "llm_tokens": sum(u.prompt_tokens + u.completion_tokens for u in usage),
        "cost_usd": round(sum(u.cost_usd for u in usage), 4),
    }
