"""`trajgym compare` in cells: recorded, skipped when unchanged, recomputed when not, resumable.

A tiny Llama stands in for the student (and, re-seeded, for the white-box teacher), so that a
whole run (harvest, training, evaluation) takes seconds; everything else is the real run.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers import tiny_model, tiny_tokenizer

from trajgym.agents.expert import ScriptedExpert
from trajgym.agents.tool_text import chatml, to_text_messages
from trajgym.envs import make
from trajgym.experiments.cells import ResultsFolder
from trajgym.experiments.compare import CompareConfig, run_compare
from trajgym.rollouts.rollout import rollout


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny student and a tiny white-box teacher sharing its tokenizer."""
    root = tmp_path_factory.mktemp("models")
    env = make("trajgym/RetailLite-v0", split="train")
    texts = [
        chatml(to_text_messages(t.messages, t.tools))
        for t in (rollout(env, ScriptedExpert(), seed=s) for s in range(3))
    ]
    tokenizer = tiny_tokenizer(texts)
    for name, seed in (("student", 0), ("teacher", 1)):
        tiny_model(tokenizer, seed=seed).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root / "student", root / "teacher"


def _config(models: tuple[Path, Path], tmp: Path, **changes: Any) -> CompareConfig:
    student, teacher = models
    fields: dict[str, Any] = {
        "env": "trajgym/RetailLite-v0",
        "output_dir": tmp / "work",
        "results_dir": tmp / "results",
        "budgets": [2],
        "sources": ["teacher", "logit_kd", "sft+rl"],
        "white_box": {"student": str(teacher)},
        "keep": "verified",
        "sft": {"model": str(student), "max_optimizer_steps": 1, "batch_size": 2, "bf16": False},
        "rl": {"tasks_per_step": 1, "group_size": 2, "max_new_tokens": 8, "max_turns": 3},
        "rollouts": {
            "max_tasks": 2,
            "tasks_per_round": 2,
            "samples_per_task": 2,
            "max_new_tokens": 8,
            "max_turns": 3,
        },
        "eval": {
            "num_tasks": 2,
            "heldout_tasks": 1,
            "max_new_tokens": 8,
            "max_turns": 4,
            "dtype": "float32",
        },
    }
    for key, value in changes.items():
        fields[key] = fields[key] | value if isinstance(value, dict) else value
    return CompareConfig.model_validate(fields)


@pytest.fixture
def trainings(monkeypatch) -> Counter[str]:
    """Every training run (SFT or RL), by its folder under the work folder, counted."""
    import trajgym.train.rl as rl
    import trajgym.train.sft as sft

    counted: Counter[str] = Counter()
    for module in (sft, rl):

        def counting(config, *args, _train=module.train, **kwargs):  # type: ignore[no-untyped-def]
            counted["/".join(Path(config.output_dir).parts[-3:])] += 1
            return _train(config, *args, **kwargs)

        monkeypatch.setattr(module, "train", counting)
    return counted


def test_cells_are_recorded_freed_skipped_and_recomputed_when_changed(
    models, tmp_path, trainings
) -> None:
    config = _config(models, tmp_path, noise_floor=True)
    first = run_compare(config, show_progress=False)
    results = ResultsFolder(tmp_path / "results")
    recorded = results.records()
    assert set(recorded) == {
        "teacher@2",
        "teacher@2~s1",  # the noise floor: output imitation trained at another seed
        "logit_kd@2",
        "sft+rl@2",
        "teacher@0",
        "base-student@0",
    }
    assert sum(trainings.values()) == 4 and trainings["students-s1/b2/teacher"] == 1
    assert set(recorded["teacher@2"].sampled) == {"test seed 0", "test seed 1"}
    floor = {(r["what"], r["place"]) for r in first["noise_floor"]}
    assert ("teacher@2 sampled at two seeds", "test") in floor
    assert ("teacher@2 trained at two seeds", "ood") in floor
    paired = {(r["source"], r["place"]) for r in first["paired"]}
    assert ("logit_kd", "test") in paired and ("sft+rl", "ood") in paired
    assert all(r["n"] == 2 for r in first["paired"] if r["place"] == "test")
    assert first["flops"]["teacher student"]["student_training_flops"] > 0
    assert first["flops"]["logit_kd student"]["teacher_inference_flops"] > 0
    assert (tmp_path / "results" / "compute.png").stat().st_size
    assert recorded["sft+rl@2"].reproduced == {"teacher@2": True}  # started from those weights
    # Weights are gone once no cell needs them; the results stay whole without them.
    assert not list((tmp_path / "work" / "students").rglob("*.safetensors"))
    for record in recorded.values():
        assert set(record.outcomes) == {"test", "ood", "Airline-v0 (held-out domain)"}
        assert record.made_by["commit"] and record.made_by["cpu"]
        if record.budget:
            assert record.student and record.compute["trained_tokens"] > 0
    assert (tmp_path / "results" / "report.md").exists()
    assert (tmp_path / "results" / "data" / "pools.json").exists()

    # The same run again: every cell is skipped, the report is the same.
    trainings.clear()
    again = run_compare(config, show_progress=False)
    assert not trainings and again["results"] == first["results"]

    # Another white-box teacher (new weights in its folder): only the cell that reads it.
    tokenizer_files = list(models[1].glob("tok*")) + list(models[1].glob("special*"))
    assert tokenizer_files
    from transformers import AutoTokenizer

    tiny_model(AutoTokenizer.from_pretrained(models[1]), seed=2).save_pretrained(models[1])
    run_compare(config, show_progress=False)
    assert set(trainings) == {"students/b2/logit_kd"}

    # Another training setting: every student is retrained, the references are not.
    trainings.clear()
    changed = _config(models, tmp_path, sft={"lr": 3e-4}, noise_floor=True)
    run_compare(changed, show_progress=False)
    assert trainings == {  # sft+rl continues the teacher student: trained once
        "students/b2/teacher": 1,
        "students-s1/b2/teacher": 1,
        "students/b2/logit_kd": 1,
        "students/b2/sft+rl": 1,
    }
    after = ResultsFolder(tmp_path / "results").records()
    assert after["teacher@0"].digest == recorded["teacher@0"].digest
    assert after["teacher@2"].digest != recorded["teacher@2"].digest


def test_a_run_stopped_halfway_leaves_the_report_of_its_recorded_cells(
    models, tmp_path, monkeypatch
) -> None:
    import trajgym.experiments.compare as compare

    def stopped(config, source, *args, _make=compare.make_student, **kwargs):  # type: ignore[no-untyped-def]
        if source == "sft+rl":
            raise KeyboardInterrupt  # the session ends in the last cell
        return _make(config, source, *args, **kwargs)

    monkeypatch.setattr(compare, "make_student", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_compare(_config(models, tmp_path), show_progress=False)
    report = json.loads((tmp_path / "results" / "report.json").read_text())
    assert report["pending"] == ["sft+rl student"]
    assert set(report["results"]) == {
        "teacher",
        "base student",
        "teacher student",
        "logit_kd student",
    }
    assert {r["source"] for r in report["paired"]} == {"logit_kd"}
    text = (tmp_path / "results" / "report.md").read_text()
    assert "In progress: 1 cell still to run** (sft+rl student)" in text
    assert "logit_kd student" in text

    monkeypatch.undo()  # resumed: the last cell runs and the report is whole
    done = run_compare(_config(models, tmp_path), show_progress=False)
    assert done["pending"] == [] and "sft+rl student" in done["results"]
    assert "In progress" not in (tmp_path / "results" / "report.md").read_text()


def test_a_copied_results_folder_resumes_on_a_clean_machine(models, tmp_path, trainings) -> None:
    config = _config(models, tmp_path / "a", sources=["teacher", "sft+rl"])
    run_compare(config, show_progress=False)
    # A new machine: no work folder, the committed results only, one cell never finished.
    shutil.copytree(tmp_path / "a" / "results", tmp_path / "b" / "results")
    (tmp_path / "b" / "results" / "cells" / "sft+rl@2.json").unlink()
    trainings.clear()
    moved = _config(models, tmp_path / "b", sources=["teacher", "sft+rl"])
    harvests = Counter[str]()
    import trajgym.experiments.pools as pools

    real = pools.self_generate
    pools.self_generate = lambda *a, **k: harvests.update(["played"]) or real(*a, **k)  # type: ignore[assignment]
    try:
        report = run_compare(moved, show_progress=False)
    finally:
        pools.self_generate = real  # type: ignore[assignment]
    # The teacher student it continues is retrained (its weights stayed on the old machine),
    # deterministically: the same digest as recorded.
    assert trainings == {"students/b2/teacher": 1, "students/b2/sft+rl": 1}
    assert not harvests  # the pools came from the results folder, byte for byte
    a = json.loads((tmp_path / "a" / "results" / "data" / "pools.json").read_text())
    b = json.loads((tmp_path / "b" / "results" / "data" / "pools.json").read_text())
    assert a == b
    records = ResultsFolder(tmp_path / "b" / "results").records()
    assert set(records) == {"teacher@2", "sft+rl@2", "teacher@0", "base-student@0"}
    assert report["students"]["sft+rl student"]["cell"] == "sft+rl@2"
    assert records["sft+rl@2"].reproduced == {"teacher@2": True}
    assert records["teacher@2"] == ResultsFolder(tmp_path / "a" / "results").records()["teacher@2"]


def test_adding_a_source_that_plays_keeps_the_harvest_and_its_cells(models, tmp_path) -> None:
    config = _config(models, tmp_path, sources=["teacher"])
    run_compare(config, show_progress=False)
    data = tmp_path / "results" / "data"
    harvest = (data / "teacher.jsonl.gz").read_bytes()
    before = ResultsFolder(tmp_path / "results").records()["teacher@2"]
    # On a new machine (no work folder), `self` is added: it plays after the harvest, so the
    # pools change, while the harvest (timings and all) and the cells trained on it do not.
    shutil.rmtree(tmp_path / "work")
    run_compare(_config(models, tmp_path, sources=["teacher", "self"]), show_progress=False)
    assert (data / "teacher.jsonl.gz").read_bytes() == harvest
    assert json.loads((data / "pools.json").read_text())["identity"]["played"] == ["self"]
    assert ResultsFolder(tmp_path / "results").records()["teacher@2"] == before  # not retrained
