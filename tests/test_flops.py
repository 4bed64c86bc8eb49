"""FLOPs by the Kaplan / Chinchilla convention; parameter counts equal the real models'."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from conftest import needs_smollm2

from trajgym.experiments.flops import (
    CellCompute,
    attention_flops_per_token,
    cell_compute,
    inference_flops,
    model_parameters,
    training_flops,
)

SMOLLM2_135M = SimpleNamespace(
    model_type="llama",
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
)
# Per layer: attention 576 * (576 + 192 + 192 + 576) = 884,736, MLP 3 * 576 * 1536 = 2,654,208,
# two norms 1,152; 30 layers and the final norm (576): 106,203,456; the tied embedding
# 49152 * 576 = 28,311,552 once.
TOTAL, NON_EMBEDDING = 134_515_008, 106_203_456


def test_smollm2_parameters_from_its_config() -> None:
    assert model_parameters(SMOLLM2_135M) == TOTAL
    assert model_parameters(SMOLLM2_135M, non_embedding=True) == NON_EMBEDDING
    untied = SimpleNamespace(**{**vars(SMOLLM2_135M), "tie_word_embeddings": False})
    assert model_parameters(untied) == TOTAL + 49152 * 576


@needs_smollm2
def test_smollm2_parameters_equal_the_loaded_model() -> None:
    from trajgym.agents.models import load_student

    model = load_student()[0]
    assert sum(p.numel() for p in model.parameters()) == TOTAL
    assert model_parameters(model) == TOTAL
    assert model_parameters(model.config) == TOTAL
    assert model_parameters(model, non_embedding=True) == NON_EMBEDDING


def small_configs() -> list[object]:
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    shape = {
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 100,
    }
    return [
        LlamaConfig(**shape, tie_word_embeddings=True),
        LlamaConfig(**shape, attention_bias=True, mlp_bias=True, head_dim=24),
        MistralConfig(**shape, tie_word_embeddings=False),
        Qwen2Config(**shape, tie_word_embeddings=True),
        Qwen3Config(**shape, head_dim=24, attention_bias=True),
    ]


@pytest.mark.parametrize("index", range(5))
def test_config_arithmetic_equals_a_meta_device_model(index: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    config = small_configs()[index]
    with torch.device("meta"):  # the real module layout, no weights
        model = AutoModelForCausalLM.from_config(config)
    assert model_parameters(config) == sum(p.numel() for p in model.parameters())
    assert model_parameters(config, non_embedding=True) == model_parameters(
        model, non_embedding=True
    )


def test_other_architectures_are_counted_on_the_meta_device() -> None:
    from transformers import AutoModelForCausalLM, GPT2Config

    config = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=50, n_positions=16)
    real = AutoModelForCausalLM.from_config(config)
    assert model_parameters(config) == sum(p.numel() for p in real.parameters())


def test_six_n_d_and_two_n_d() -> None:
    assert training_flops(TOTAL, 10**6) == 6 * TOTAL * 10**6 == 807_090_048_000_000
    assert inference_flops(TOTAL, 10**6) == 2 * TOTAL * 10**6
    # Kaplan's context term for SmolLM2 at 2048 tokens: 2 * 30 * 2048 * 576 per token forward.
    attention = attention_flops_per_token(SMOLLM2_135M, 2048)
    assert attention == 70_778_880
    assert inference_flops(TOTAL, 10, attention) == (2 * TOTAL + attention) * 10
    assert training_flops(TOTAL, 10, attention) == 3 * (2 * TOTAL + attention) * 10


def test_cell_compute_adds_its_parts() -> None:
    cell = cell_compute(
        student_params=100,
        teacher_params=1000,
        trajectories=4,
        trained_tokens=50,
        teacher_tokens=20,
        rollout_tokens=30,
        scripted_teacher=True,
    )
    assert cell.student_training_flops == 6 * 100 * 50
    assert cell.teacher_inference_flops == 2 * 1000 * 20
    assert cell.rollout_flops == 2 * 100 * 30
    assert cell.total_flops == 30_000 + 40_000 + 6_000
    assert cell.teacher_flops_nominal
    data = json.loads(json.dumps(cell.as_json()))
    assert data["total_flops"] == 76_000
    assert CellCompute.model_validate(data) == cell
    sft = cell_compute(student_params=100, teacher_params=1000, trajectories=4, trained_tokens=50)
    assert sft.total_flops == 30_000 and not sft.teacher_flops_nominal
    with pytest.raises(ValueError):
        cell.trajectories = 5  # type: ignore[misc]  # frozen
