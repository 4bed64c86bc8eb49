"""Every verb, as a new user meets it: a mistake is a short error with exit 2, never a
traceback; data prints verbatim; a missing or empty input is an error that writes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from trajgym.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
MISSING = "no-such-store.jsonl"

# Per verb: a bad value, and a missing argument (or an option's missing value where the verb
# needs no argument). None only where the verb has nothing of that kind to get wrong.
CASES: dict[str, tuple[list[str] | None, list[str] | None]] = {
    "envs": (["surplus"], None),  # no options: an extra argument is its only mistake
    "tasks": (["trajgym/RetailLite-v0", "--limit", "many"], []),
    "rollout": (["trajgym/RetailLite-v0", "--seed", "abc"], []),
    "generate": (["--num-tasks", "abc"], ["--num-tasks"]),
    "eval": (["--split", "tset"], []),  # with no split: evaluation must name one
    "export": ([MISSING, "-o", "x.jsonl", "--format", "csv"], [MISSING]),
    "run": (["configs/quickstart.yaml", "--set", "no-equals-sign"], []),
    "selfgen": (["--max-tasks", "abc"], ["--max-tasks"]),
    "label": ([MISSING, "-o", "x.jsonl", "--tool-mode", "telepathy"], []),
    "compare": (["configs/compare.yaml", "--set", "no-equals-sign"], []),
    "view": ([MISSING, "--output"], []),
    "new-env": (["Not A Name!"], []),
    "synthesize": (["trajgym/RetailLite-v0", "--model", "m", "-n", "abc"], ["trajgym/RetailLite-v0"]),
    "mcp": (["trajgym/RetailLite-v0", "--transport", "pigeon"], []),
    "serve": (["trajgym/RetailLite-v0", "--port", "abc"], []),
    "train sft": (["--lora-r", "abc"], []),  # no data: SFTConfig's data is required
    "train rl": (["--lora-r", "abc"], ["--model"]),
    "judge grade": ([MISSING, "-o", "x.jsonl", "--concurrency", "abc"], [MISSING]),
    "judge calibrate": ([MISSING, "--group-by", "planet"], []),
    "judge filter": ([MISSING, "-o", "x.jsonl", "--keep", "everything"], []),
}


def command_paths() -> list[str]:
    """Every verb and sub-verb the app has, as typed after `trajgym`."""
    paths = []
    for name, command in typer.main.get_command(app).commands.items():  # type: ignore[attr-defined]
        subs = getattr(command, "commands", None)
        paths += [f"{name} {sub}" for sub in subs] if subs else [name]
    return paths


def trajgym(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`trajgym ARGS` in a real process, as a shell runs it."""
    command = [sys.executable, "-m", "trajgym", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120)


def test_every_verb_has_its_mistakes_listed() -> None:
    assert sorted(command_paths()) == sorted(CASES)


def test_no_mistake_on_any_verb_prints_a_traceback(tmp_path: Path) -> None:
    calls = []
    for path, (bad_value, missing) in CASES.items():
        verb = path.split()
        calls.append((path, "unknown option", [*verb, "--no-such-option"]))
        if bad_value is not None:
            calls.append((path, "bad value", [*verb, *bad_value]))
        if missing is not None:
            calls.append((path, "missing argument", [*verb, *missing]))
    calls += [
        ("trajgym", "no verb", []),
        ("judge", "no sub-verb", ["judge"]),
        ("train", "no sub-verb", ["train"]),
        ("grade", "unknown verb", ["grade"]),
    ]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda call: trajgym(call[2], tmp_path), calls))
    wrong = []
    for (_, mistake, args), proc in zip(calls, results, strict=True):
        output = proc.stdout + proc.stderr
        if proc.returncode != 2 or "Traceback" in output or len(output.splitlines()) > 60:
            wrong.append(f"trajgym {' '.join(args)} ({mistake}): exit {proc.returncode}\n{output}")
        elif mistake not in ("no verb", "no sub-verb") and len(proc.stderr.splitlines()) > 8:
            wrong.append(f"trajgym {' '.join(args)} ({mistake}): a long error\n{output}")
    assert not wrong, "\n\n".join(wrong)
    assert not list(tmp_path.iterdir())  # no mistake wrote anything
    unknown = results[calls.index(("grade", "unknown verb", ["grade"]))]
    assert "Did you mean 'generate'?" in unknown.stderr
    typo = trajgym(["generate", "--num-taks", "5"], tmp_path)
    assert "No such option: --num-taks" in typo.stderr and "--num-tasks" in typo.stderr
    assert "trajgym generate --help" in typo.stderr


def test_version() -> None:
    proc = trajgym(["--version"])
    assert proc.returncode == 0 and proc.stdout.startswith("trajgym 0.")


# Data prints verbatim --------------------------------------------------------------------------


def test_a_workspace_transcript_keeps_its_square_brackets() -> None:
    task = "test-rename_function-0007"  # clamp's docstring: "Limit value to the range [low, high]."
    result = runner.invoke(app, ["rollout", "trajgym/Workspace-v0", "--task", task])
    assert result.exit_code == 0, result.output
    assert '"""Limit value to the range [low, high]."""' in result.output
    assert "return [clamp(*args) for args in cases]" in result.output


def test_a_broken_yaml_error_keeps_pyyamls_words(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("split: test\npersonas: [terse, confused\nnum_tasks: 2\n")
    proc = trajgym(["generate", str(config)], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "expected ',' or ']'" in proc.stderr and str(config) in proc.stderr


def test_help_prints_brackets_and_defaults() -> None:
    view = trajgym(["view", "--help"]).stdout
    assert "[default: the file names]" in view
    generate = " ".join(trajgym(["generate", "--help"]).stdout.split())
    for shown in ("[default: trajgym/Retail-v1]", "[default: train]", "[default: 1]"):
        assert shown in generate  # env, split, samples: the config's own defaults
    assert "--balance-families / --no-balance-families" in generate
    evaluate = " ".join(trajgym(["eval", "--help"]).stdout.split())
    assert "[default: runs/eval/trajectories.jsonl]" in evaluate


def test_a_boolean_flag_takes_both_forms_and_explains_a_value(tmp_path: Path) -> None:
    args = ["generate", "--env", "trajgym/RetailLite-v0", "--num-tasks", "2", "-o", "s.jsonl"]
    for flag in ("--balance-families", "--no-balance-families"):
        assert trajgym([*args, flag], tmp_path).returncode == 0
    wrong = trajgym([*args, "--balance-families", "true"], tmp_path)
    assert wrong.returncode == 2 and "boolean options are flags" in wrong.stderr


# One split default -----------------------------------------------------------------------------


def test_every_verb_defaults_to_train_and_rollout_follows_its_task() -> None:
    for verb in (["tasks", "x"], ["rollout", "x"], ["serve", "x"], ["mcp", "x"], ["generate"]):
        help_text = " ".join(trajgym([*verb[:1], "--help"]).stdout.split())
        assert "defaults to train" in help_text or "[default: train]" in help_text, verb
    result = runner.invoke(app, ["rollout", "trajgym/RetailLite-v0", "--task", "ood-order_status-00001"])
    assert result.exit_code == 0 and "ood-order_status-00001" in result.output


# Missing or empty input: an error, nothing written -----------------------------------------------


@pytest.fixture
def empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    return path


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_export_view_judge_train_refuse_no_input(tmp_path: Path, empty: Path, kind: str) -> None:
    source = str(empty if kind == "empty" else tmp_path / "nostore.jsonl")
    out = tmp_path / "out"
    runs = {
        "export openai": ["export", source, "--format", "openai", "-o", f"{out}.jsonl"],
        "export hf": ["export", source, "--format", "hf", "-o", str(out)],
        "view": ["view", source, "-o", f"{out}.html"],
        "judge grade": ["judge", "grade", source, "-o", f"{out}.jsonl"],
        "judge calibrate": ["judge", "calibrate", source, "-o", f"{out}.json"],
        "judge filter": ["judge", "filter", source, "-o", f"{out}.jsonl"],
        "train sft": ["train", "sft", "--set", f"data=[{source}]", "--output-dir", str(out)],
    }
    with ThreadPoolExecutor(4) as pool:
        played = pool.map(lambda args: trajgym(args, tmp_path), runs.values())
        procs = dict(zip(runs, played, strict=True))
    for name, proc in procs.items():
        assert proc.returncode == 2, (name, proc.stdout + proc.stderr)
        assert "Traceback" not in proc.stderr and source in proc.stderr, (name, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([empty.name])  # nothing written


def test_export_that_filters_out_everything_writes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "s.jsonl"
    assert runner.invoke(app, ["rollout", "trajgym/RetailLite-v0", "--n", "2", "-o", str(store)]).exit_code == 0
    out = tmp_path / "x.jsonl"
    proc = trajgym(["export", str(store), "--format", "openai", "-o", str(out), "--split", "ood"])
    assert proc.returncode == 2 and "None of the 2 trajectories passes the filters" in proc.stderr
    assert not out.exists()


def test_eval_names_its_split_and_refuses_an_empty_selection(tmp_path: Path) -> None:
    unnamed = trajgym(["eval", "--agent", "expert", "-o", "e.jsonl"], tmp_path)
    assert unnamed.returncode == 2 and "--split test" in unnamed.stderr
    args = ["eval", "--agent", "expert", "--split", "test", "--env", "trajgym/RetailLite-v0"]
    none = trajgym([*args, "--families", "no_such_family", "-o", "e.jsonl"], tmp_path)
    assert none.returncode == 2 and "selects none" in none.stderr
    assert not list(tmp_path.iterdir())


# A resumed run --------------------------------------------------------------------------------


def test_a_resumed_generate_prints_the_stores_totals(tmp_path: Path) -> None:
    args = ["generate", "--env", "trajgym/RetailLite-v0", "--num-tasks", "3", "-o", "s.jsonl"]
    assert trajgym(args, tmp_path).returncode == 0
    again = trajgym(args, tmp_path)
    assert again.returncode == 0
    rows = {line.split("│")[1].strip(): line.split("│")[2:4] for line in again.stdout.splitlines() if line.count("│") == 4}
    assert [c.strip() for c in rows["episodes"]] == ["0 of 3", "3"]
    assert [c.strip() for c in rows["successes"]] == ["0", "3"]
    summary = json.loads((tmp_path / "s.summary.json").read_text())
    assert summary["stored"]["successes"] == 3


def test_tables_fit_80_columns_without_cutting_a_word(tmp_path: Path, cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    store = tmp_path / "s.jsonl"
    for agent in ("expert", "random"):
        code, _, _ = cli("rollout", "trajgym/RetailLite-v0", "--agent", agent, "--n", "4", "-o", str(tmp_path / f"{agent}.jsonl"))
        assert code == 0
    store.write_text((tmp_path / "expert.jsonl").read_text() + (tmp_path / "random.jsonl").read_text())
    code, out, err = cli("judge", "calibrate", str(store), str(tmp_path / "expert.jsonl"))
    assert code == 0, err
    assert "agree-" in out and "false" in out  # the headers wrapped, whole
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
