"""report_to: which trackers a run may name, and the config they get as hyperparameters.

The curves themselves are read back from real runs in test_sft.py and test_rl.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from trajgym.cli import app
from trajgym.config import load_config
from trajgym.errors import ConfigError
from trajgym.experiments.pipeline import PipelineConfig
from trajgym.train.rl import RLConfig
from trajgym.train.sft import SFTConfig
from trajgym.train.tracking import hyperparameters


@pytest.mark.parametrize("model", [SFTConfig, RLConfig])
def test_an_unknown_tracker_is_a_config_error_that_names_the_valid_ones(model) -> None:
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'") as caught:
        load_config(model, values={"data": ["x.jsonl"], "report_to": ["tensorbord"]})
    assert "Did you mean 'tensorboard'?" in str(caught.value)
    assert "trackio" in str(caught.value) and "wandb" in str(caught.value)


def test_a_tracker_whose_package_is_missing_says_how_to_install_it(monkeypatch) -> None:
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])
    with pytest.raises(ConfigError, match=r"'wandb' is not installed.*pip install wandb"):
        load_config(SFTConfig, values={"data": ["x.jsonl"], "report_to": ["wandb"]})
    with pytest.raises(ConfigError, match=r"sft\.report_to: .*'tensorboard' is not installed"):
        load_config(PipelineConfig, values={"sft": {"report_to": ["tensorboard"]}})


def test_no_tracker_by_default_and_the_cli_option_reaches_the_config(tmp_path: Path) -> None:
    assert SFTConfig(data=[]).report_to == [] and RLConfig().report_to == []
    assert load_config(RLConfig, values={"report_to": ["tensorboard"]}).report_to == ["tensorboard"]
    data = tmp_path / "data.jsonl"
    data.write_text("{}\n")
    result = CliRunner().invoke(
        app, ["train", "sft", "--data", str(data), "--report-to", "tensorbord"]
    )
    assert result.exit_code != 0
    assert "unknown tracker 'tensorbord'" in str(result.exception) + result.output


def test_hyperparameters_are_the_config_flattened_to_scalars() -> None:
    config = RLConfig(report_to=["tensorboard"], families=None, lora_targets=["q_proj"])
    flat = hyperparameters(config)
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())
    assert flat["rewards.brevity"] == 0.0 and flat["lr"] == 2e-5 and flat["lora"] is True
    assert flat["families"] == "null" and flat["lora_targets"] == '["q_proj"]'
    assert flat["output_dir"] == "runs/rl" and flat["teacher"] == "null"
