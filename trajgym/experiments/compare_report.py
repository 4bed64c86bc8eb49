"""The comparison's report: data statistics per source, results per student, Markdown, plot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from trajgym.experiments.pipeline import family_table, plot_results
from trajgym.records.store import read_trajectories

if TYPE_CHECKING:
    from trajgym.experiments.compare import CompareConfig

__all__ = ["data_statistics", "plot_results", "render_report"]


def data_statistics(
    config: CompareConfig, source: str, train_file: Path, generated: Path, tokenizer_path: str
) -> dict[str, Any]:
    """What a source's training data holds, and what producing it took.

    Turns and tool calls count what carries loss: for on-policy data, the teacher's labels
    where the student disagreed with it and the student's own turns where it agreed.
    """
    from transformers import AutoTokenizer

    from trajgym.rollouts.onpolicy import training_conversations
    from trajgym.train.sft import load_examples

    trajectories = list(read_trajectories(train_file))
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
    examples = load_examples(config.sft_config(source, train_file), tokenizer)
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


def render_report(report: dict[str, Any]) -> str:
    """The comparison as Markdown: results per student and place, then data per source."""
    k = report["k"]
    lines = [
        f"# trajgym compare: {report['env']}",
        "",
        f"Students trained from the same base on **{report['matched_budget']} trajectories per "
        f"source** (budget {report['budget']}; kept by: {report['keep']}). Self-generated and "
        f"on-policy data were played by `{report['generator']}`. Usable trajectories per "
        "source before matching: "
        + ", ".join(f"{s} {n}" for s, n in report["available"].items())
        + "".join(
            f"; **{s} yielded none, so no {s} student was trained**"
            for s, n in report["available"].items()
            if not n
        )
        + ".",
        "",
        f"| student | where | tasks | success | 95% CI | pass^{k} | turns | tool calls | "
        "invalid calls | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for agent, by_place in report["results"].items():
        for place, m in by_place.items():
            low, high = m["success_ci95"]
            lines.append(
                f"| {agent} | {place} | {m['tasks']} | {m['success_rate']:.1%} | "
                f"[{low:.1%}, {high:.1%}] | {m[f'pass^{k}']:.1%} | {m['avg_turns']:.1f} | "
                f"{m['avg_tool_calls']:.1f} | {m['avg_invalid_tool_calls']:.1f} | {m['errors']} |"
            )
    lines += [
        "",
        "Training data per source (turns and tool calls are those carrying loss):",
        "",
        "| source | trajectories | sequences | turns / traj. | tool calls / traj. | distinct tool "
        "sequences | tokens | trained tokens | episodes generated | their success | model tokens "
        "| cost |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for source, d in report["data"].items():
        lines.append(
            f"| {source} | {d['trajectories']} | {d['sequences']} | "
            f"{d['turns_per_trajectory']} | {d['tool_calls_per_trajectory']} | "
            f"{d['distinct_tool_sequences']} | {d['tokens']:,} | {d['trained_tokens']:,} | "
            f"{d['episodes_generated']} | {d['generated_success_rate']:.1%} | "
            f"{d['llm_tokens']:,} | ${d['cost_usd']:.4f} |"
        )
    lines += ["", "Success by task family:", ""]
    lines += family_table(report["results"], "student", "where")
    lines += [
        "",
        "Seconds per stage: " + ", ".join(f"{k} {v}" for k, v in report["timings"].items()),
        "",
        "![success](success.png)",
        "",
    ]
    return "\n".join(lines)
