"""The model keys of a GGUF (its hparams) from a Hugging Face config, and which architectures convert at all.

* ``SUPPORTED`` / ``REFUSED``: ``architectures[0]`` -> (gguf arch name, family), and the refusals with their
  reason; ``check_architecture`` names the architecture in a refusal, before any weight is read.
* ``write_hparams``: context, sizes, heads, norm epsilon, rope base and scaling, and Gemma 3's sliding window
  and local/global layer period, as llama.cpp reads them.
* Llama 3 rope scaling becomes the ``rope_freqs`` tensor: per frequency f of
  wavelength λ = 2π/f, factor 1 when λ < L/high, ``factor`` when λ > L/low,
  else ``1 / ((1-s)/factor + s)`` with s = (L/λ - low)/(high - low), L the
  original context; llama.cpp divides each frequency by it.
"""

from __future__ import annotations

import math

from preflexor_local.errors import InvalidModelError

# architectures[0] -> (gguf arch name, family)
SUPPORTED = {
    "LlamaForCausalLM": ("llama", "llama"),
    "MistralForCausalLM": ("llama", "llama"),
    "Qwen2ForCausalLM": ("qwen2", "qwen2"),
    "Qwen3ForCausalLM": ("qwen3", "qwen3"),
    "Gemma3ForCausalLM": ("gemma3", "gemma3"),
    "Gemma3ForConditionalGeneration": ("gemma3", "gemma3"),  # the text model only
}
REFUSED = {
    "Qwen2MoeForCausalLM": "mixture-of-experts models are not supported",
    "Qwen3MoeForCausalLM": "mixture-of-experts models are not supported",
    "MixtralForCausalLM": "mixture-of-experts models are not supported",
    "GemmaForCausalLM": "Gemma 1 is not supported (Gemma 3 is)",
    "Gemma2ForCausalLM": "Gemma 2 is not supported (Gemma 3 is)",
    "Qwen2VLForConditionalGeneration": "vision-language Qwen models are not supported",
}


def check_architecture(cfg: dict) -> tuple[str, str, str]:
    """(HF class, gguf arch, family) or a refusal naming the architecture."""
    archs = cfg.get("architectures") or []
    name = archs[0] if archs else None
    if name is None:
        mt = cfg.get("model_type")
        name = {
            "llama": "LlamaForCausalLM",
            "mistral": "MistralForCausalLM",
            "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM",
            "gemma3_text": "Gemma3ForCausalLM",
        }.get(mt or "")
        if name is None:
            raise InvalidModelError(f"config.json names no architecture (model_type {mt!r})", hint=f"supported: {', '.join(SUPPORTED)}")
    if name in SUPPORTED:
        return (name, *SUPPORTED[name])
    reason = REFUSED.get(name, "not one of the supported families")
    raise InvalidModelError(f"architecture {name} is not supported for GGUF conversion: {reason}", hint=f"supported: {', '.join(SUPPORTED)}")


def text_config(hf_cfg):
    return getattr(hf_cfg, "text_config", None) or hf_cfg


def _rope(cfg, layer_type: str | None = None) -> dict:
    """Rope settings from a transformers 5 config (rope_parameters) or an older one (rope_theta/rope_scaling)."""
    rp = getattr(cfg, "rope_parameters", None)
    if isinstance(rp, dict) and layer_type and isinstance(rp.get(layer_type), dict):
        rp = rp[layer_type]
    if isinstance(rp, dict) and "rope_theta" in rp:
        return dict(rp)
    out = dict(getattr(cfg, "rope_scaling", None) or {})
    out.setdefault("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    out.setdefault("rope_type", out.get("type", "default"))
    return out


def _llama3_rope_factors(rope: dict, head_dim: int):
    import numpy as np

    base, factor = float(rope["rope_theta"]), float(rope["factor"])
    low, high = float(rope.get("low_freq_factor", 1.0)), float(rope.get("high_freq_factor", 4.0))
    ctx = float(rope.get("original_max_position_embeddings", 8192))
    freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    out = []
    for f in freqs:
        wavelen = 2 * math.pi / f
        if wavelen < ctx / high:
            out.append(1.0)
        elif wavelen > ctx / low:
            out.append(factor)
        else:
            s = (ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - s) / factor + s))
    return np.asarray(out, dtype=np.float32)


def write_hparams(writer, family: str, cfg, notes: list[str]) -> list[tuple[str, object]]:
    """Model keys; returns extra tensors to write (name, numpy array)."""
    import gguf

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer.add_context_length(int(getattr(cfg, "max_position_embeddings", 4096)))
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    extra: list[tuple[str, object]] = []
    rope = _rope(cfg, "full_attention" if family == "gemma3" else None)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if family != "gemma3":
        writer.add_rope_dimension_count(head_dim)
    rtype = rope.get("rope_type") or "default"
    if rtype == "llama3" and family == "llama":
        extra.append((gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _llama3_rope_factors(rope, head_dim)))
    elif rtype == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif rtype == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(rope.get("original_max_position_embeddings", cfg.max_position_embeddings)))
    elif rtype != "default":
        raise InvalidModelError(f"rope scaling type {rtype!r} is not supported for {family}", hint="supported: default, linear, yarn, and llama3 (Llama only)")
    if family == "gemma3":
        writer.add_sliding_window(int(cfg.sliding_window))
        local = _rope(cfg, "sliding_attention")
        writer.add_rope_freq_base_swa(float(local.get("rope_theta", 10000.0)))
        layer_types = list(getattr(cfg, "layer_types", None) or [])
        if layer_types:
            # llama.cpp's period p: layer i is global iff (i + 1) % p == 0
            full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
            period = full[0] + 1 if full else len(layer_types) + 1
            if [i for i in range(len(layer_types)) if (i + 1) % period == 0] != full:
                raise InvalidModelError("Gemma 3 layer_types do not follow a fixed local/global period", hint="llama.cpp supports only periodic patterns")
            writer.add_sliding_window_pattern(period)
        qpas = getattr(cfg, "query_pre_attn_scalar", head_dim)
        if qpas not in (head_dim, cfg.hidden_size // cfg.num_attention_heads):
            notes.append(f"query_pre_attn_scalar {qpas} is neither head_dim nor hidden/heads: llama.cpp will scale differently")
        if getattr(cfg, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(float(cfg.final_logit_softcapping))
    return extra
