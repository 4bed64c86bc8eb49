"""Shipped configs stay valid."""

from __future__ import annotations

from pathlib import Path

from trajgym.config import load_config
from trajgym.rollouts.config import GenerateConfig

CONFIGS = Path(__file__).parents[1] / "configs"


def test_generate_config_loads() -> None:
    cfg = load_config(GenerateConfig, CONFIGS / "generate.yaml", ["split=test"])
    assert cfg.split == "test" and cfg.num_tasks == 200 and cfg.agent.kind == "expert"


def test_sft_config_loads() -> None:
    from trajgym.train.sft import SFTConfig

    cfg = load_config(SFTConfig, CONFIGS / "sft.yaml", ["lr=0.001"])
    assert cfg.lora and cfg.lr == 0.001 and cfg.model == "smollm2-135m-instruct"


def test_distill_config_loads_with_its_teacher() -> None:
    from trajgym.train.rl import RLConfig

    cfg = load_config(RLConfig, CONFIGS / "distill.yaml", ["teacher.reward_coef=0.5"])
    assert cfg.teacher is not None and cfg.teacher.model == "runs/quickstart/rl/model"
    assert cfg.teacher.reward_coef == 0.5 and cfg.teacher.coef == 1.0
