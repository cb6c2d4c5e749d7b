"""Fuse an MLX adapter into its base: a standalone MLX model directory (``train … -o out`` writes ``out/merged``).

LoRA/DoRA layers are fused by mlx-lm's own ``fuse()`` (re-quantized when the
base is quantized, unless ``dequantize``); trained token rows are written into
the embedding / output rows. The adapter's chat template (when it carries one)
becomes the model's ``chat_template.jinja``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ...atomic import atomic_dir
from ...errors import UsageError


def _set_rows(layer, ids, rows):
    import mlx.core as mx
    import mlx.nn as nn

    from ...backends._mlx_adapters import dense_weight

    w = dense_weight(layer)
    w = w.at[mx.array(ids)].add(rows.astype(w.dtype) - w[mx.array(ids)])
    if isinstance(layer, nn.QuantizedEmbedding):
        e = nn.Embedding(*w.shape)
        e.weight = w
        return nn.QuantizedEmbedding.from_embedding(e, group_size=layer.group_size, bits=layer.bits, mode=layer.mode)
    if isinstance(layer, nn.QuantizedLinear):
        lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight = w
        return nn.QuantizedLinear.from_linear(lin, group_size=layer.group_size, bits=layer.bits, mode=layer.mode)
    layer.weight = w
    return layer


def fuse_model(model, dequantize: bool = False):
    """Replace every adapter module of ``model`` (in memory) by a plain layer with the adapter folded in."""
    from mlx.utils import tree_unflatten

    from ...backends._mlx_adapters import TokenRowsEmbedding, TokenRowsLinear, adapter_modules

    fused = []
    for name, module, base in adapter_modules(model):
        if isinstance(module, (TokenRowsEmbedding, TokenRowsLinear)):
            fused.append((name, _set_rows(base, module.ids, module.rows)))
        else:
            fused.append((name, module.fuse(dequantize=dequantize)))
    if fused:
        model.update_modules(tree_unflatten(fused))
    return model


def fuse_adapter(base: str | Path, adapter: str | Path, out: str | Path, force: bool = False, dequantize: bool = False, quiet: bool = False) -> Path:
    """Write ``out``: the MLX model ``base`` with the MLX adapter ``adapter`` fused in."""
    import mlx.core as mx
    from mlx_lm.utils import load as mlx_load
    from mlx_lm.utils import save_config, save_model

    from ...backends._mlx_adapters import apply_adapter

    base, adapter, out = Path(base), Path(adapter), Path(out)
    if out.exists() and not force:
        raise UsageError(f"output {out} already exists", hint="choose another path, or pass force=True")
    model, wrapper, config = mlx_load(str(base), return_config=True)
    apply_adapter(model, adapter)
    fuse_model(model, dequantize=dequantize)
    mx.eval(model.parameters())
    if dequantize:
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    with atomic_dir(out) as tmp:
        save_model(tmp, model)
        save_config(dict(config), tmp / "config.json")
        wrapper._tokenizer.save_pretrained(str(tmp))
        for src in (adapter / "chat_template.jinja", base / "generation_config.json", base / "chat_template.jinja"):
            if src.is_file() and not (tmp / src.name).exists():
                shutil.copy(src, tmp / src.name)
    if not quiet:
        import sys

        print(f"fused {adapter} into {out}", file=sys.stderr)
    return out
