"""The student's weights as the generation engine reads them, and its forward pass.

The engine does not call the transformers model: a decode step there costs ~30 Python-level
module calls per layer and its caches are built for one sequence layout. Instead the weights
are read once into plain tensors (q/k/v and gate/up fused into one matrix each, LoRA deltas of
a peft model merged in, cast to the compute dtype) and :func:`forward` runs a packed batch of
tokens through them: prefill rows and decode rows in one pass, no padding in the linear
layers, attention against the preallocated cache of :mod:`trajgym.agents.kv_slots`.

Supported: Llama-style decoders (Llama, SmolLM, Mistral without a short sliding window, Qwen2,
Qwen3). :func:`unsupported` says why another model is not; it then generates through the
older :class:`~trajgym.agents.batching.Batcher`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from trajgym.agents.kv_slots import KVSlots, StepPlan

_FAMILIES = {"llama", "mistral", "qwen2", "qwen3"}


@dataclass
class Layer:
    """One decoder layer's tensors (fused projections in the compute dtype)."""

    ln1: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o: torch.Tensor
    ln2: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor


@dataclass
class Weights:
    """Everything :func:`forward` reads: shapes, tensors and the rotary tables."""

    layers: list[Layer]
    embed: torch.Tensor
    norm: torch.Tensor
    lm_head: torch.Tensor
    cos: torch.Tensor  # (max positions, head dim), fp32: cast per step, as transformers does
    sin: torch.Tensor
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    act: Any
    scale: float

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype."""
        return self.embed.dtype


def unsupported(model: Any) -> str | None:
    """Why the engine cannot run ``model`` (None when it can)."""
    base = _base(model)
    config: Any = getattr(base, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in _FAMILIES:
        return f"model type {kind!r} is not one of {sorted(_FAMILIES)}"
    window = getattr(config, "sliding_window", None)
    if window is not None and window < config.max_position_embeddings:
        return f"a sliding attention window ({window} tokens)"
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") in ("dynamic", "longrope"):
        return f"rope type {rope['rope_type']!r} depends on the sequence length"
    for module in base.modules():
        if any(getattr(module, "use_dora", {}).values()):
            return "a DoRA adapter"
    return None


def compute_dtype(requested: str, model: Any) -> torch.dtype:
    """``auto``: bf16 where it runs natively, else fp32; otherwise the dtype named."""
    import torch

    from trajgym.agents.models import bf16_runs_natively

    if requested == "auto":
        return torch.bfloat16 if bf16_runs_natively() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        requested
    ]


def read_weights(model: Any, dtype: torch.dtype) -> Weights:
    """The model's current weights in ``dtype`` (a copy where fused, cast or merged)."""
    import torch

    base = _base(model)
    inner, config = base.model, base.config
    with torch.no_grad():
        layers = [_layer(block, dtype) for block in inner.layers]
        embed = _dense(inner.embed_tokens)[0].to(dtype)
        lm_head = _dense(base.lm_head)[0].to(dtype)
        positions = torch.arange(config.max_position_embeddings, device=embed.device)
        probe = torch.zeros((), dtype=torch.float32, device=embed.device)
        cos, sin = inner.rotary_emb(probe, positions[None])
    attention = inner.layers[0].self_attn
    head_dim = attention.head_dim
    return Weights(
        layers=layers,
        embed=embed,
        norm=inner.norm.weight.detach().to(dtype),
        lm_head=lm_head,
        cos=cos[0].float(),
        sin=sin[0].float(),
        heads=config.num_attention_heads,
        kv_heads=config.num_key_value_heads,
        head_dim=head_dim,
        eps=inner.norm.variance_epsilon,
        act=inner.layers[0].mlp.act_fn,
        scale=getattr(attention, "scaling", head_dim**-0.5),
    )


def forward(w: Weights, cache: KVSlots, plan: StepPlan) -> torch.Tensor:
    """Run a step's packed tokens; the fp32 logits of each row's last token."""
    import torch
    import torch.nn.functional as F

    n = plan.tokens.shape[0]
    x = F.embedding(plan.tokens, w.embed)
    cos = w.cos[plan.positions].to(w.dtype)[:, None]  # (tokens, 1, head dim)
    sin = w.sin[plan.positions].to(w.dtype)[:, None]
    q_width, kv_width = w.heads * w.head_dim, w.kv_heads * w.head_dim
    with torch.no_grad():
        for i, layer in enumerate(w.layers):
            h = _rms(x, layer.ln1, w.eps)
            q, k, v = F.linear(h, layer.qkv, layer.qkv_bias).split(
                [q_width, kv_width, kv_width], dim=-1
            )
            q = q.view(n, w.heads, w.head_dim)
            k = k.view(n, w.kv_heads, w.head_dim)
            if layer.q_norm is not None and layer.k_norm is not None:
                q, k = _rms(q, layer.q_norm, w.eps), _rms(k, layer.k_norm, w.eps)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            cache.write(i, plan, k, v.view(n, w.kv_heads, w.head_dim))
            attended = cache.attend(i, q, plan, w.scale)
            x = x + F.linear(attended.reshape(n, q_width), layer.o)
            h = _rms(x, layer.ln2, w.eps)
            gate, up = F.linear(h, layer.gate_up).chunk(2, dim=-1)
            x = x + F.linear(w.act(gate) * up, layer.down)
        last = _rms(x[plan.last], w.norm, w.eps)
        return F.linear(last, w.lm_head).float()


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm exactly as transformers' Llama computes it (statistics in fp32)."""
    import torch

    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _base(model: Any) -> Any:
    """The transformers model under a peft wrapper (its LoRA layers still in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _layer(block: Any, dtype: torch.dtype) -> Layer:
    import torch

    attention, mlp = block.self_attn, block.mlp
    q, qb = _dense(attention.q_proj)
    k, kb = _dense(attention.k_proj)
    v, vb = _dense(attention.v_proj)
    biases = (qb, kb, vb)
    qkv_bias = None
    if any(b is not None for b in biases):
        widths = (q.shape[0], k.shape[0], v.shape[0])
        qkv_bias = torch.cat(
            [b if b is not None else q.new_zeros(n) for b, n in zip(biases, widths, strict=True)]
        ).to(dtype)
    q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
    return Layer(
        ln1=block.input_layernorm.weight.detach().to(dtype),
        qkv=torch.cat([q, k, v]).to(dtype),
        qkv_bias=qkv_bias,
        q_norm=q_norm.weight.detach().to(dtype) if q_norm is not None else None,
        k_norm=k_norm.weight.detach().to(dtype) if k_norm is not None else None,
        o=_dense(attention.o_proj)[0].to(dtype),
        ln2=block.post_attention_layernorm.weight.detach().to(dtype),
        gate_up=torch.cat([_dense(mlp.gate_proj)[0], _dense(mlp.up_proj)[0]]).to(dtype),
        down=_dense(mlp.down_proj)[0].to(dtype),
    )


def _dense(module: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A linear or embedding layer's effective weight (and bias): LoRA deltas merged in."""
    base = getattr(module, "base_layer", None)
    if base is None:
        bias = getattr(module, "bias", None)
        return module.weight.detach(), bias.detach() if bias is not None else None
    weight = base.weight.detach()
    if not getattr(module, "merged", False) and not getattr(module, "disable_adapters", False):
        for name in module.active_adapters:
            if name in getattr(module, "lora_A", {}) or name in getattr(
                module, "lora_embedding_A", {}
            ):
                weight = weight + module.get_delta_weight(name).to(weight.dtype)
    bias = getattr(base, "bias", None)
    return weight, bias.detach() if bias is not None else None
