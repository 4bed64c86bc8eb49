"""The default student: converted once from the wheel's GGUF, reloaded with identical logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import GGUF, needs_smollm2


@needs_smollm2
@pytest.mark.timeout(600)
def test_gguf_is_cached_as_safetensors_with_identical_logits(tmp_path: Path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    from trajgym.agents.models import default_student_path, load_student
    from trajgym.agents.tool_text import chat_template

    monkeypatch.setenv("TRAJGYM_CACHE", str(tmp_path))
    torch.manual_seed(0)
    path = default_student_path()
    # Converting leaves the seeded RNG alone: a run that converts (the first on a machine)
    # trains exactly like every later one.
    after_conversion = torch.rand(4)
    torch.manual_seed(0)
    assert torch.equal(after_conversion, torch.rand(4))
    assert (path / "model.safetensors").exists() and path.parent == tmp_path
    model, tokenizer = load_student()
    assert tokenizer.chat_template == chat_template()
    assert GGUF is not None
    reference = AutoModelForCausalLM.from_pretrained(str(GGUF.parent), gguf_file=GGUF.name)
    ids = tokenizer("<|im_start|>user\nWhere is my order?<|im_end|>\n", return_tensors="pt")[
        "input_ids"
    ]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    assert default_student_path() == path  # cached: no second conversion
    # A plain fp32 model: saving it works (a GGUF-flagged one refuses) and nothing re-quantizes.
    assert getattr(model.config, "quantization_config", None) is None
    model.save_pretrained(tmp_path / "resaved")
    assert (tmp_path / "resaved" / "model.safetensors").exists()
