"""``trajgym judge``: grade trajectory files, calibrate a judge against verification, filter.

Without ``--model`` the embedded (offline, rule-based) judge grades; with it, any litellm
model does, configured like every other model call (``--config configs/judge.yaml``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from trajgym.cli import common
from trajgym.cli.common import console

if TYPE_CHECKING:
    from trajgym.judges.calibration import JudgeConfig
    from trajgym.judges.judge import Judge

judge_app = typer.Typer(
    help="Grade trajectories with a judge, calibrate it against verification, filter them.",
    no_args_is_help=True,
    add_completion=False,
)

Model = Annotated[
    str | None,
    typer.Option(
        help="litellm model of the LLM judge, e.g. openai/gpt-4o-mini.  "
        "[default: the embedded judge]"
    ),
]
ApiBase = Annotated[str | None, typer.Option(help="Base URL of an OpenAI-compatible server.")]
ApiKeyEnv = Annotated[str | None, typer.Option(help="Environment variable that holds the API key.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="Judge YAML (JudgeConfig).")]
Concurrency = Annotated[int | None, typer.Option(help="Trajectories graded at once.")]
Recorded = Annotated[
    bool,
    typer.Option(help="Use the verdicts recorded in the file (from `judge grade`); grade none."),
]


@judge_app.command()
def grade(
    input: Annotated[Path, typer.Argument(help="Trajectories JSONL.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Graded trajectories JSONL.")],
    model: Model = None,
    api_base: ApiBase = None,
    api_key_env: ApiKeyEnv = None,
    config: ConfigFile = None,
    concurrency: Concurrency = None,
) -> None:
    """Grade every trajectory of INPUT and write it, verdict attached, to OUTPUT (resumable)."""
    from trajgym.judges.calibration import grade_file

    cfg, judge = _judge(config, model, api_base, api_key_env, concurrency)
    counts = grade_file(input, output, judge, cfg.concurrency, show_progress=True)
    console.print(
        f"graded {counts['graded']} with {judge.name} ({counts['skipped']} already in {output}): "
        f"pass {counts['passed']}, fail {counts['failed']}, error {counts['errors']}; "
        f"cost ${counts['cost_usd']:.4f}"
    )


@judge_app.command()
def calibrate(
    inputs: Annotated[list[Path], typer.Argument(help="Trajectory JSONL files (one group each).")],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Report: writes both .json and .md beside each other."),
    ] = None,
    group_by: Annotated[
        Literal["source", "provenance"],
        typer.Option(help="'source' (the file) or 'provenance' (kind:agent:model)."),
    ] = "source",
    model: Model = None,
    api_base: ApiBase = None,
    api_key_env: ApiKeyEnv = None,
    config: ConfigFile = None,
    concurrency: Concurrency = None,
    recorded: Recorded = False,
    resamples: Annotated[int, typer.Option(help="Bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """How well a judge agrees with verification: agreement, kappa, false accepts and rejects."""
    from trajgym.judges.calibration import calibrate as run_calibration
    from trajgym.judges.calibration import load_file

    cfg, judge = _judge(config, model, api_base, api_key_env, concurrency)
    trajectories, sources = [], []
    labels = source_labels(inputs)
    for path in inputs:
        found = load_file(path)
        trajectories += found
        sources += [labels[path]] * len(found)
    report = run_calibration(
        trajectories,
        None if recorded else judge,
        groups=sources if group_by == "source" else None,
        concurrency=cfg.concurrency,
        resamples=resamples,
        seed=seed,
        show_progress=True,
    )
    report["sources"] = {label: str(path) for path, label in labels.items()}
    table = common.table(*TERMINAL_COLUMNS, title="judge vs verification (95% bootstrap CIs)")
    for row in report_rows(report):
        table.add_row(*row)
    console.print(table)
    if output is not None:
        json_path, md_path = output.with_suffix(".json"), output.with_suffix(".md")
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=1))
        md_path.write_text(report_markdown(report))
        console.print(f"wrote {json_path} and {md_path}")


@judge_app.command("filter")
def filter_(
    input: Annotated[Path, typer.Argument(help="Trajectories JSONL.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Kept trajectories JSONL.")],
    keep: Annotated[
        Literal["verified", "judge", "both"],
        typer.Option(help="verified (reward 1), judge (judge passed) or both."),
    ] = "both",
    model: Model = None,
    api_base: ApiBase = None,
    api_key_env: ApiKeyEnv = None,
    config: ConfigFile = None,
    concurrency: Concurrency = None,
    recorded: Recorded = False,
) -> None:
    """Keep trajectories by verification, judge, or both; counts go to <output>.filter.json."""
    from trajgym.judges.calibration import filter_trajectories, load_file

    cfg, judge = _judge(config, model, api_base, api_key_env, concurrency)
    summary = filter_trajectories(
        load_file(input),
        output,
        keep,
        None if recorded else judge,
        cfg.concurrency,
        show_progress=True,
    )
    dropped = ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in summary["dropped"].items())
    console.print(
        f"kept {summary['kept']} of {summary['input']} in {output} (dropped: {dropped}); "
        f"counts in {output.with_suffix('.filter.json')}"
    )


def _judge(
    config: Path | None,
    model: str | None,
    api_base: str | None,
    api_key_env: str | None,
    concurrency: int | None,
) -> tuple[JudgeConfig, Judge]:
    from trajgym.config import load_config
    from trajgym.judges.calibration import JudgeConfig, make_judge

    options = {
        "llm.model": model,
        "llm.api_base": api_base,
        "llm.api_key_env": api_key_env,
        "concurrency": concurrency,
    }
    # Values go in as YAML scalars; quoting keeps a URL or model name a string.
    overrides = [f"{k}={json.dumps(v)}" for k, v in options.items() if v is not None]
    cfg = load_config(JudgeConfig, config, overrides)
    return cfg, make_judge(cfg)


def source_labels(paths: list[Path]) -> dict[Path, str]:
    """A short, unique label per file: its stem, or parent/stem where stems collide."""
    stems = [p.stem for p in paths]
    return {p: p.stem if stems.count(p.stem) == 1 else f"{p.parent.name}/{p.stem}" for p in paths}


REPORT_COLUMNS = (
    "group",
    "n",
    "excluded",
    "verified pass/fail",
    "agreement",
    "kappa",
    "false accept",
    "false reject",
)
# The same columns, named to wrap at spaces within 80 terminal columns.
TERMINAL_COLUMNS = (
    "group",
    "n",
    "excl.",
    "pass/ fail",
    "agree- ment",
    "kappa",
    "false acc.",
    "false rej.",
)


def report_rows(report: dict[str, Any]) -> list[list[str]]:
    """Table rows (one per REPORT_COLUMNS) of a calibration report: overall, then groups."""
    rows = []
    for label, m in [("overall", report["overall"]), *report["groups"].items()]:
        rows.append(
            [
                label,
                str(m["n_graded"]),
                str(m["n_excluded"]),
                f"{m['positives']}/{m['negatives']}",
                *(_with_ci(m, name) for name in ("agreement", "kappa")),
                *(_with_ci(m, name) for name in ("false_accept_rate", "false_reject_rate")),
            ]
        )
    return rows


def _with_ci(m: dict[str, Any], name: str) -> str:
    if m[name] is None:
        return "n/a"
    ci = m[f"{name}_ci95"]
    return f"{m[name]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def report_markdown(report: dict[str, Any]) -> str:
    """The calibration table in Markdown, naming the judges that graded."""
    judges = ", ".join(f"{j['judge']} ({j['prompt_hash'][:12]})" for j in report["judges"])
    lines = [
        f"Judge: {judges or 'none'}; 95% bootstrap intervals ({report['resamples']} resamples).",
        "",
        "| " + " | ".join(REPORT_COLUMNS) + " |",
        "|" + "---|" * len(REPORT_COLUMNS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in report_rows(report)]
    return "\n".join(lines) + "\n"
