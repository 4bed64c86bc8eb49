"""Compute, counted the way the scaling-law literature counts it.

The convention of Kaplan et al. 2020 ("Scaling Laws for Neural Language Models", sec. 2.1,
Table 1) and Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models", the
Chinchilla paper, app. F):

- a forward pass costs ``2 N`` FLOPs per token processed (a multiply and an add per weight);
- training costs ``6 N D``: the forward pass plus a backward pass of twice its cost;
- inference, generating or scoring, costs ``2 N D``, D the tokens run through the model
  (with a KV cache each token, prompt or generated, is processed once);
- optionally, the context term of Kaplan's Table 1, ``2 n_layer n_ctx d_attn`` FLOPs per
  token forward (``d_attn = heads * head_dim``, which is ``d_model`` in most models), three
  times that in training. It is small while ``n_ctx`` is well under ``12 d_model``.

N is the model's *total* parameter count (Chinchilla's), from :func:`model_parameters`. For a
model with tied embeddings, like SmolLM2, that is exactly the weights a token is multiplied
by: the non-embedding parameters plus the output projection (the input embedding is a
lookup, and its one copy is the output projection). Kaplan's non-embedding N
(``non_embedding=True``) leaves the output projection out, 21% of SmolLM2-135M; untied
models' total N counts the input lookup as if it were a matmul.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, computed_field

# Decoders whose parameters follow from their config's fields alone (Llama's layout: GQA
# attention, gated MLP, RMSNorm, no position embeddings); any other is built on torch's meta
# device, which allocates no weights, and counted.
_LLAMA_STYLE = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def model_parameters(source: Any, *, non_embedding: bool = False) -> int:
    """A model's parameter count, without loading its weights when given a config.

    Args:
        source: A transformers config (``AutoConfig``), a local path or hub id to read one
            from, or a loaded model (its unique parameters are counted, tied ones once).
        non_embedding: Kaplan's N: leave out the input embedding and the output projection.
            By default all parameters are counted, the N of trajgym's FLOPs (module doc).

    Returns:
        The parameter count: exact for Llama, Mistral, Qwen2 and Qwen3 configs (computed from
        their fields) and for loaded models; other configs are instantiated on the meta
        device and counted.
    """
    if isinstance(source, (str, os.PathLike)):
        from transformers import AutoConfig

        source = AutoConfig.from_pretrained(str(source))
    if callable(getattr(source, "parameters", None)):
        return _count_module(source, non_embedding)
    if getattr(source, "model_type", None) in _LLAMA_STYLE:
        return _count_llama_style(source, non_embedding)
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(source)
    return _count_module(model, non_embedding)


def attention_flops_per_token(source: Any, n_ctx: int) -> int:
    """Kaplan's context term: ``2 n_layer n_ctx d_attn`` forward FLOPs per token.

    Args:
        source: A transformers config, a path or hub id, or a loaded model (its ``config``).
        n_ctx: The context each token attends over. For causal sequences of length L,
            ``L / 2`` on average; Kaplan uses the full context length.
    """
    config = _config(source)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return 2 * config.num_hidden_layers * n_ctx * heads * head_dim


def training_flops(params: int, tokens: int, attention_per_token: int = 0) -> int:
    """``6 N D``: a forward (2 N) and a backward (4 N) pass per token trained on.

    Args:
        params: N, from :func:`model_parameters`.
        tokens: D, every token position run forward and backward, summed over epochs (the
            whole sequence, not only the tokens that carry loss).
        attention_per_token: Kaplan's forward context term (:func:`attention_flops_per_token`),
            tripled like the rest; 0 leaves it out.
    """
    return 3 * inference_flops(params, tokens, attention_per_token)


def inference_flops(params: int, tokens: int, attention_per_token: int = 0) -> int:
    """``2 N D``: one forward pass per token processed, generated or scored.

    Args:
        params: N, from :func:`model_parameters`.
        tokens: D, every token position run forward: prompts and generated tokens alike.
        attention_per_token: Kaplan's forward context term; 0 leaves it out.
    """
    return (2 * params + attention_per_token) * tokens


class CellCompute(BaseModel):
    """The compute behind one cell of a comparison (a method at a data budget and seed).

    Three parts, each counted with the module's convention: training the student
    (``6 N_student D``), the teacher's forward passes (``2 N_teacher D``: writing trajectories,
    or scoring tokens for logit KD and on-policy distillation) and the student's own rollouts
    (``2 N_student D``, RL and on-policy methods).

    A scripted (non-model) teacher costs no FLOPs; its written tokens are costed as if the
    white-box teacher model had generated them (``2 N_teacher`` per token), so that methods
    fed by it compare with methods fed by a model at the compute they stand for, and
    ``teacher_flops_nominal`` says so.
    """

    model_config = ConfigDict(frozen=True)

    student_training_flops: int = Field(description="6 N_student x trained_tokens.")
    teacher_inference_flops: int = Field(
        description="2 N_teacher x teacher_tokens: the teacher generating or scoring tokens."
    )
    rollout_flops: int = Field(description="2 N_student x rollout_tokens: the student's episodes.")
    trajectories: int = Field(description="Trajectories the student was trained on.")
    teacher_tokens: int = Field(description="Token positions the teacher generated or scored.")
    trained_tokens: int = Field(
        description="Token positions run forward and backward in training, over all epochs."
    )
    rollout_tokens: int = Field(description="Token positions the student processed in rollouts.")
    teacher_flops_nominal: bool = Field(
        description="Whether teacher_inference_flops include tokens a scripted teacher wrote, "
        "costed as if the white-box teacher model had generated them."
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_flops(self) -> int:
        """Student training, teacher inference and rollouts together."""
        return self.student_training_flops + self.teacher_inference_flops + self.rollout_flops

    def as_json(self) -> dict[str, Any]:
        """The JSON-ready form, ``total_flops`` included."""
        return self.model_dump(mode="json")


def cell_compute(
    *,
    student_params: int,
    teacher_params: int,
    trajectories: int,
    trained_tokens: int,
    teacher_tokens: int = 0,
    rollout_tokens: int = 0,
    scripted_teacher: bool = False,
) -> CellCompute:
    """A cell's compute from its token counts and the two models' parameter counts.

    Args:
        student_params: N of the student, from :func:`model_parameters`.
        teacher_params: N of the teacher model; with a scripted teacher, the white-box
            teacher's (its tokens are costed at that model's rate).
        trajectories: Trajectories the student was trained on.
        trained_tokens: Token positions trained on (forward and backward), over all epochs.
        teacher_tokens: Token positions the teacher generated or scored.
        rollout_tokens: Token positions the student processed generating its own episodes.
        scripted_teacher: Whether some teacher tokens were written by a scripted teacher.
    """
    return CellCompute(
        student_training_flops=training_flops(student_params, trained_tokens),
        teacher_inference_flops=inference_flops(teacher_params, teacher_tokens),
        rollout_flops=inference_flops(student_params, rollout_tokens),
        trajectories=trajectories,
        teacher_tokens=teacher_tokens,
        trained_tokens=trained_tokens,
        rollout_tokens=rollout_tokens,
        teacher_flops_nominal=scripted_teacher and teacher_tokens > 0,
    )


def _config(source: Any) -> Any:
    if isinstance(source, (str, os.PathLike)):
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(source))
    return getattr(source, "config", source)


def _count_llama_style(config: Any, non_embedding: bool) -> int:
    d, ff, kind = config.hidden_size, config.intermediate_size, config.model_type
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    q = heads * head_dim
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    attention = d * q + 2 * d * kv + q * d  # q, k, v, o projections
    if kind == "qwen2":  # Qwen2 always biases q, k and v, never o
        attention += q + 2 * kv
    elif getattr(config, "attention_bias", False):
        attention += q + 2 * kv + d
    if kind == "qwen3":  # RMSNorm of each head's queries and keys
        attention += 2 * head_dim
    mlp = 3 * d * ff + (2 * ff + d if getattr(config, "mlp_bias", False) else 0)
    layer = attention + mlp + 2 * d  # two RMSNorms
    body = config.num_hidden_layers * layer + d  # and the final norm
    if non_embedding:
        return body
    tied = getattr(config, "tie_word_embeddings", False)
    return body + config.vocab_size * d * (1 if tied else 2)


def _count_module(model: Any, non_embedding: bool) -> int:
    # parameters() yields a tied tensor once, so tied embeddings count once.
    unique = {id(p): p.numel() for p in model.parameters()}
    if non_embedding:
        for get in ("get_input_embeddings", "get_output_embeddings"):
            layer = getattr(model, get, lambda: None)()
            weight = getattr(layer, "weight", None)
            unique.pop(id(weight), None)
    return sum(unique.values())
