"""Where a trained model lives is answered once, and the main job and compare agree on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from trajgym.config import load_config
from trajgym.errors import ConfigError
from trajgym.experiments.compare import CompareConfig
from trajgym.experiments.pipeline import PipelineConfig, _agents
from trajgym.train.common import TrainedModel


def test_an_adapter_start_without_lora_is_trained_and_loaded_as_an_adapter(tmp_path: Path) -> None:
    # sft: {lora: false, adapter: X} trains on X's adapter, so SFT writes adapter/, and RL and
    # evaluation must load base + that adapter (an earlier pipeline looked for model/).
    cfg = PipelineConfig.model_validate(
        {
            "output_dir": tmp_path,
            "sft": {"lora": False, "adapter": str(tmp_path / "start")},
            "rl": {"lora": False},
        }
    )
    sft = cfg.sft_config().trained()
    assert sft == TrainedModel(student=cfg.sft.model, adapter=str(tmp_path / "sft" / "adapter"))
    rl = cfg.rl_config()
    assert (
        rl is not None and rl.model == cfg.sft.model and rl.adapter == tmp_path / "sft" / "adapter"
    )
    assert rl.trained().adapter == str(tmp_path / "rl" / "adapter")
    agents = _agents(cfg, cfg.sft.model, sft, rl.trained())
    assert agents["sft student"].adapter == str(tmp_path / "sft" / "adapter")
    assert agents["rl student"].adapter == str(tmp_path / "rl" / "adapter")
    assert agents["base student"].adapter is None


def test_a_full_fine_tune_is_loaded_from_its_model_folder(tmp_path: Path) -> None:
    cfg = PipelineConfig.model_validate({"output_dir": tmp_path, "sft": {"lora": False}, "rl": {}})
    assert cfg.sft_config().trained() == TrainedModel(student=str(tmp_path / "sft" / "model"))
    rl = cfg.rl_config()
    assert rl is not None and rl.model == str(tmp_path / "sft" / "model") and rl.adapter is None
    compare = CompareConfig.model_validate({"output_dir": tmp_path, "sft": {"lora": False}})
    trained = compare.sft_config("teacher", tmp_path / "t.jsonl").trained()
    assert trained.folder == tmp_path / "students" / "teacher" / "model"


def test_stage_fields_are_checked_at_load_and_named(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("sft: {lr: -1}\nrl: {group_size: 1}\n")
    with pytest.raises(ConfigError) as error:
        load_config(PipelineConfig, config)
    assert "sft.lr" in str(error.value) and "rl.group_size" in str(error.value)
    with pytest.raises(ConfigError, match="rl.model"):
        load_config(PipelineConfig, None, ["rl.model=other"])
    with pytest.raises(ConfigError, match="sft.max_steps"):
        load_config(PipelineConfig, None, ["sft.max_steps=3"])  # renamed: max_optimizer_steps
