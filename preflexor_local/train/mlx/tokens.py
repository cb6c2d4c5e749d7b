"""New tokens on MLX: add the thinking tags to a converted model, resize and initialise its embeddings.

mlx-lm cannot add tokens. ``add_tokens`` does it on an MLX (or HF) model
directory and writes a new MLX directory:

1. the tokenizer gets the tags as special tokens (one id each, never split);
2. the embedding matrix (and an untied ``lm_head``) grows to the new vocabulary
   size; each new row is initialised to the **mean of the existing rows** (the
   usual choice: the new token starts as an "average" token, so the output
   distribution barely moves); quantized matrices are dequantized, grown and
   re-quantized with the same group size and bits;
3. ``config.json`` gets the new ``vocab_size``.

Train those rows with ``train_embeddings=True`` (``--train-embeddings``): the
trainer then learns the tag rows as token rows next to the LoRA/DoRA adapter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ...atomic import atomic_dir, write_json
from ...errors import InvalidModelError, UsageError
from ...format import ThinkingFormat


def _grow(layer, n_new: int):
    import mlx.core as mx
    import mlx.nn as nn

    from ...backends._mlx_adapters import dense_weight

    w = dense_weight(layer).astype(mx.float32)
    mean = w.mean(axis=0, keepdims=True)
    grown = mx.concatenate([w, mx.repeat(mean, n_new, axis=0)], axis=0)
    dtype = layer.weight.dtype if not isinstance(layer, (nn.QuantizedLinear, nn.QuantizedEmbedding)) else layer.scales.dtype
    grown = grown.astype(dtype)
    if isinstance(layer, nn.QuantizedEmbedding):
        emb = nn.Embedding(*grown.shape)
        emb.weight = grown
        return nn.QuantizedEmbedding.from_embedding(emb, group_size=layer.group_size, bits=layer.bits, mode=layer.mode)
    if isinstance(layer, nn.Embedding):
        emb = nn.Embedding(*grown.shape)
        emb.weight = grown
        return emb
    if isinstance(layer, (nn.Linear, nn.QuantizedLinear)):
        if "bias" in layer:
            raise InvalidModelError("the output layer has a bias; growing it is not supported")
        lin = nn.Linear(grown.shape[1], grown.shape[0], bias=False)
        lin.weight = grown
        if isinstance(layer, nn.QuantizedLinear):
            return nn.QuantizedLinear.from_linear(lin, group_size=layer.group_size, bits=layer.bits, mode=layer.mode)
        return lin
    raise InvalidModelError(f"cannot grow a layer of type {type(layer).__name__}")


def add_tokens(model_dir: str | Path, out_dir: str | Path, tokens: list[str] | tuple[str, ...] | None = None, force: bool = False) -> dict:
    """Write ``out_dir``: the model of ``model_dir`` with ``tokens`` (default: the PRefLexOR tags) as special tokens.

    Returns ``{"output", "added": [...], "ids": {token: id}, "vocab_size"}``. Tokens already single
    special tokens are left alone (nothing is resized if all are present).
    """
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.utils import load as mlx_load
    from mlx_lm.utils import save_config, save_model

    from ...backends._mlx_adapters import embedding_name, output_layer_name

    src, out = Path(model_dir).expanduser(), Path(out_dir).expanduser()
    if not (src / "config.json").is_file():
        raise InvalidModelError(f"{src} is not a model directory (no config.json)", hint="pass an MLX model directory (`preflexor-local convert mlx`)")
    if out.exists() and not force:
        raise UsageError(f"output {out} already exists", hint="choose another -o, or pass force=True / --force")
    if src.resolve() == out.resolve():
        raise UsageError("the output directory must differ from the input")
    tokens = list(tokens or ThinkingFormat().tags)
    model, wrapper, config = mlx_load(str(src), return_config=True)
    tok = wrapper._tokenizer
    vocab = tok.get_vocab()
    added = [t for t in tokens if t not in vocab]
    if added:
        tok.add_tokens(added, special_tokens=True)
    for t in tokens:
        if len(tok.encode(t, add_special_tokens=False)) != 1:
            raise InvalidModelError(
                f"{t!r} is in the vocabulary but does not encode to one token", hint="it is probably a normal (non-special) token; pick other tags with --tags"
            )
    modules = dict(model.named_modules())
    emb_name = embedding_name(model)
    rows = int(modules[emb_name].weight.shape[0])
    need = len(tok) - rows
    if need > 0:
        updates = [(emb_name, _grow(modules[emb_name], need))]
        head = output_layer_name(model)
        if head is not None:
            updates.append((head, _grow(modules[head], need)))
        model.update_modules(tree_unflatten(updates))
        mx.eval(model.parameters())
        target = config["text_config"] if "text_config" in config and "vocab_size" in config["text_config"] else config
        target["vocab_size"] = rows + need
        if hasattr(model, "args") and hasattr(model.args, "vocab_size"):
            model.args.vocab_size = rows + need
    ids = {t: tok.convert_tokens_to_ids(t) for t in tokens}
    with atomic_dir(out) as tmp:
        save_model(tmp, model)
        save_config(dict(config), tmp / "config.json")
        tok.save_pretrained(str(tmp))
        for name in ("generation_config.json", "chat_template.jinja"):
            if (src / name).is_file() and not (tmp / name).exists():
                shutil.copy(src / name, tmp / name)
        write_json(tmp / "added_tokens_report.json", {"added": added, "ids": ids, "init": "mean of existing rows"})
    return {"output": str(out), "added": added, "ids": ids, "vocab_size": rows + max(need, 0)}
