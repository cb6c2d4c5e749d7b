"""Turn a Hugging Face ``config.json`` into the keys mlx-lm 0.32.2 reads, so MLX runs the model transformers runs.

transformers 5 writes the rotary settings into ``rope_parameters`` (for Gemma 3 one
dict per layer type) and leaves no top-level ``rope_theta``; mlx-lm's model classes
mostly read the older top-level keys and silently fall back to their own defaults
(Qwen2: base 1e6 where transformers uses 1e4; Gemma 3: a local/global period of 6).
``mlx_overrides(cfg)`` returns the top-level keys to set, read the way transformers
reads them (values in ``rope_parameters`` first, then the top-level keys, then the
family's transformers default):

* ``rope_theta`` — the base (Gemma 3: the ``full_attention`` one);
* ``rope_scaling`` — the rest of the rope parameters when the type is not
  ``default`` (mlx-lm's ``initialize_rope`` reads ``type`` before ``rope_type``,
  so both are set), else None;
* ``partial_rotary_factor``, ``original_max_position_embeddings`` — lifted to the
  top level where only ``rope_parameters`` has them (Phi-3 reads them there);
* Gemma 3: ``rope_local_base_freq`` (the ``sliding_attention`` base) and
  ``sliding_window_pattern`` p, derived from ``layer_types`` (mlx-lm makes layer i
  global iff (i + 1) % p == 0); ``sliding_window`` is read by mlx-lm as is and has
  the same meaning (checked against transformers: identical logits).

Settings mlx-lm cannot express are refused by name instead of run wrong. Known gap
left as mlx-lm has it: Mistral's all-layer ``sliding_window`` (mlx-lm's Llama needs
at least one full-attention layer), which only matters past the window length.
The function is pure (no torch, no mlx): the converter writes its result into the
MLX ``config.json``; the MLX backend and trainer pass it to ``mlx_lm.load`` as
``model_config`` (which also fixes MLX folders written by a plain ``mlx_lm.convert``).
"""

from __future__ import annotations

from .errors import InvalidModelError

DEFAULT_THETA = 10_000.0  # transformers' default base for llama, mistral, qwen2, qwen3, gemma, gemma2, phi3
GEMMA3_DEFAULT_THETA = {"full_attention": 1_000_000.0, "sliding_attention": 10_000.0}
LAYER_TYPES = ("full_attention", "sliding_attention")


def _rope(cfg: dict, layer_type: str | None = None) -> dict:
    """The effective rope parameters of ``cfg`` (for ``layer_type`` where they are per layer type)."""
    rp = cfg.get("rope_parameters")
    if not isinstance(rp, dict) or not rp:
        rp = cfg.get("rope_scaling") if isinstance(cfg.get("rope_scaling"), dict) else {}
    if any(k in rp for k in LAYER_TYPES):
        rp = rp.get(layer_type or "full_attention") or {}
    out = dict(rp)
    if "rope_theta" not in out and cfg.get("rope_theta") is not None:
        out["rope_theta"] = cfg["rope_theta"]
    if "partial_rotary_factor" not in out and cfg.get("partial_rotary_factor") is not None:
        out["partial_rotary_factor"] = cfg["partial_rotary_factor"]
    out["rope_type"] = out.get("rope_type") or out.get("type") or "default"
    return out


def _scaling(rope: dict) -> dict | None:
    if rope["rope_type"] == "default":
        return None
    scaling = {k: v for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor")}
    scaling["type"] = rope["rope_type"]  # mlx-lm reads "type" first; Phi-3 reads only "type"
    return scaling


def _gemma3_period(layer_types: list) -> int:
    full = [i for i, t in enumerate(layer_types) if t == "full_attention"]
    if not full:
        raise InvalidModelError(
            "this Gemma 3 config has no full-attention layer, which mlx-lm cannot run", hint="use the transformers or llama.cpp backend for this model"
        )
    period = full[0] + 1
    if [i for i in range(len(layer_types)) if (i + 1) % period == 0] != full:
        raise InvalidModelError(
            "Gemma 3 layer_types do not follow a fixed local/global period, which mlx-lm needs", hint="use the transformers or llama.cpp backend for this model"
        )
    return period


def mlx_overrides(cfg: dict) -> dict:
    """Top-level keys to set on ``cfg`` (an HF or MLX ``config.json`` dict) so mlx-lm reads it as transformers does.

    A fixed point: on a config that already carries the result, the result changes
    nothing. Gemma 3 multimodal configs get a whole normalised ``text_config``.
    Settings mlx-lm cannot run, or values that are not numbers, raise ``InvalidModelError``.
    """
    try:
        return _overrides(cfg)
    except (TypeError, ValueError, AttributeError) as err:
        raise InvalidModelError(
            f"config.json has rope settings that cannot be read: {err}", hint="compare its rope_parameters / rope_theta with the model's original config.json"
        ) from None


def _overrides(cfg: dict) -> dict:
    if isinstance(cfg.get("text_config"), dict) and cfg.get("model_type") == "gemma3":
        text = {"model_type": "gemma3_text", **cfg["text_config"]}
        return {"text_config": {**cfg["text_config"], **_overrides(text)}}
    mt = cfg.get("model_type")
    if mt == "gemma3_text":
        full = _rope(cfg, "full_attention")
        nested = isinstance(cfg.get("rope_parameters"), dict) and "sliding_attention" in cfg["rope_parameters"]
        # transformers 5 keeps the local base in rope_parameters; older configs name it rope_local_base_freq
        local = _rope(cfg, "sliding_attention") if nested else {"rope_type": "default"}
        if local["rope_type"] != "default":
            raise InvalidModelError(
                f"Gemma 3 local layers use rope scaling {local['rope_type']!r}, which mlx-lm does not apply there",
                hint="use the transformers or llama.cpp backend for this model",
            )
        local_theta = (cfg["rope_parameters"]["sliding_attention"] or {}).get("rope_theta") if nested else None
        out = {
            "rope_theta": float(full.get("rope_theta") or GEMMA3_DEFAULT_THETA["full_attention"]),
            "rope_local_base_freq": float(local_theta or cfg.get("rope_local_base_freq") or GEMMA3_DEFAULT_THETA["sliding_attention"]),
            "rope_scaling": _scaling(full),
        }
        if isinstance(cfg.get("layer_types"), list) and cfg["layer_types"]:
            out["sliding_window_pattern"] = _gemma3_period(cfg["layer_types"])
        return out
    rope = _rope(cfg)
    out = {"rope_theta": float(rope.get("rope_theta") or DEFAULT_THETA), "rope_scaling": _scaling(rope)}
    if rope.get("partial_rotary_factor") is not None:
        out["partial_rotary_factor"] = float(rope["partial_rotary_factor"])
    if "original_max_position_embeddings" in rope and "original_max_position_embeddings" not in cfg:
        out["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
    if mt in ("qwen2", "qwen3") and cfg.get("use_sliding_window") and "sliding_attention" in (cfg.get("layer_types") or []):
        raise InvalidModelError(
            f"this {mt} config uses sliding-window attention, which mlx-lm's {mt} does not implement",
            hint="use the transformers or llama.cpp backend for this model",
        )
    return out
