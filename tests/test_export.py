"""Export formats, filters, and a real TRL SFTTrainer run on an exported dataset."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch

from trajgym.agents.tool_text import chatml, to_text_messages
from trajgym.records.schema import Message
from trajgym.records.store import read_trajectories
from trajgym.rollouts.config import GenerateConfig
from trajgym.rollouts.generate import generate
from trajgym.train.export import ExportError, ExportFilter, export


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gen") / "t.jsonl"
    generate(GenerateConfig(num_tasks=24, output=out), show_progress=False)
    for split in ("test", "ood"):
        generate(GenerateConfig(num_tasks=6, split=split, output=out), show_progress=False)
    # One failed and one errored episode, which the default filters drop.
    first = next(read_trajectories(out))
    with out.open("a") as f:
        f.write(
            first.model_copy(update={"task_id": "x-failed", "reward": 0.0}).model_dump_json() + "\n"
        )
        f.write(
            first.model_copy(
                update={"task_id": "x-error", "status": "error", "reward": None}
            ).model_dump_json()
            + "\n"
        )
    return out


def test_hf_export_loads_with_load_dataset(store: Path, tmp_path: Path) -> None:
    counts = export([store], tmp_path / "ds", "hf", ExportFilter(min_reward=1.0))
    assert counts == {"train": 24, "test": 6, "ood": 6}
    ds = datasets.load_dataset(str(tmp_path / "ds"))
    assert set(ds) == {"train", "test", "ood"} and len(ds["train"]) == 24
    row = ds["train"][0]
    assert row["messages"][0]["role"] == "system"
    call = next(m for m in row["messages"] if m["tool_calls"])["tool_calls"][0]
    assert call["type"] == "function" and isinstance(call["function"]["arguments"], str)
    tools = json.loads(row["tools"])
    assert len(tools) == 14 and tools[0]["type"] == "function"


def test_filters(store: Path, tmp_path: Path) -> None:
    assert export([store], tmp_path / "a.jsonl", "openai", ExportFilter()) == {
        "train": 25,
        "test": 6,
        "ood": 6,
    }
    assert export([store], tmp_path / "b.jsonl", "openai", ExportFilter(status=None)) == {
        "train": 26,
        "test": 6,
        "ood": 6,
    }
    assert export([store], tmp_path / "c.jsonl", "openai", ExportFilter(splits=["ood"])) == {
        "ood": 6
    }
    with pytest.raises(ExportError, match="None of the 38 trajectories passes the filters"):
        export([store], tmp_path / "d.jsonl", "openai", ExportFilter(provenance=["teacher"]))
    assert not (tmp_path / "d.jsonl").exists()


def test_openai_and_sharegpt_rows(store: Path, tmp_path: Path) -> None:
    export([store], tmp_path / "o.jsonl", "openai", ExportFilter(min_reward=1.0))
    row = json.loads((tmp_path / "o.jsonl").read_text().splitlines()[0])
    roles = {m["role"] for m in row["messages"]}
    assert roles == {"system", "user", "assistant", "tool"}
    assert all("name" not in m for m in row["messages"] if m["role"] == "tool")
    assert all("tool_call_id" in m for m in row["messages"] if m["role"] == "tool")
    export([store], tmp_path / "s.jsonl", "sharegpt", ExportFilter(min_reward=1.0))
    share = json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])
    speakers = {t["from"] for t in share["conversations"]}
    assert speakers == {"system", "human", "gpt", "tool"}
    assert any("<tool_call>" in t["value"] for t in share["conversations"] if t["from"] == "gpt")


def test_exported_dataset_trains_two_steps_in_trl(store: Path, tmp_path: Path) -> None:
    from helpers import tiny_model, tiny_tokenizer
    from trl import SFTConfig, SFTTrainer

    export([store], tmp_path / "ds", "hf", ExportFilter(min_reward=1.0, splits=["train"]))
    dataset = datasets.load_dataset(str(tmp_path / "ds"), split="train")
    texts = [
        chatml(
            to_text_messages(
                [
                    Message.model_validate({k: v for k, v in m.items() if v is not None})
                    for m in row["messages"]
                ],
                json.loads(row["tools"]),
            )
        )
        for row in dataset
    ]
    tokenizer = tiny_tokenizer(texts)
    model = tiny_model(tokenizer)
    before = [p.detach().clone() for p in model.parameters()]
    args = SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        max_length=4096,
        assistant_only_loss=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        bf16=False,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
