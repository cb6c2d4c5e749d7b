"""MLX adapters as the MLX backend and the MLX trainer both see them.

An adapter directory is mlx-lm's own format, so ``mlx_lm.generate
--adapter-path`` and ``mlx_lm.fuse`` read it unchanged:

* ``adapter_config.json``: ``model`` (the base model directory), ``fine_tune_type``
  (``lora`` | ``dora``), ``num_layers``, ``lora_parameters`` (``rank``, ``scale``,
  ``dropout``, ``keys``), plus our own ``preflexor`` block (method, tags, token rows);
* ``adapters.safetensors``: only ``lora_a`` / ``lora_b`` / ``m`` tensors (mlx-lm's
  ``LoRALinear`` / ``DoRALinear`` layers: ``y = W x + scale * (x @ lora_a) @ lora_b``);
* ``token_rows.safetensors`` (optional, ours): trained rows of the embedding
  and output matrices for a few token ids (the thinking tags), stored as the
  full row values that replace the base rows — the same convention as PEFT's
  trainable tokens. mlx-lm ignores this file; ``apply_adapter`` applies it.

Lives under ``backends`` (not ``train``) so the inference side never imports
the training capability.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

ADAPTER_FILE = "adapters.safetensors"
CONFIG_FILE = "adapter_config.json"
ROWS_FILE = "token_rows.safetensors"


class _TokenRows(nn.Module):
    """A frozen layer plus trainable replacement ``rows`` for the token ``ids``."""

    def __init__(self, base: nn.Module, ids: list[int], rows: mx.array | None = None):
        super().__init__()
        self.base = base
        self._ids = [int(i) for i in ids]
        vocab = _vocab_size(base)
        self._onehot = mx.zeros((len(ids), vocab)).at[mx.arange(len(ids)), mx.array(self._ids)].add(1.0)
        self.rows = rows if rows is not None else _base_rows(base, self._ids)
        base.freeze()

    @property
    def ids(self) -> list[int]:
        return list(self._ids)


class TokenRowsEmbedding(_TokenRows):
    """An embedding whose rows for ``ids`` are replaced by the trainable ``rows``.

    Also usable as a tied output layer (``as_linear``), so tied models train one
    set of rows for input and output, as PEFT does.
    """

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        hit = (x[..., None] == mx.array(self._ids)).astype(y.dtype)  # [..., k]
        keep = 1 - hit.sum(-1, keepdims=True)
        return y * keep + hit @ self.rows.astype(y.dtype)

    def as_linear(self, h: mx.array) -> mx.array:
        y = self.base.as_linear(h)
        return _replace_columns(y, h, self.rows, self._onehot)


class TokenRowsLinear(_TokenRows):
    """An (untied) output layer whose rows for ``ids`` are replaced by ``rows``."""

    def __call__(self, h: mx.array) -> mx.array:
        return _replace_columns(self.base(h), h, self.rows, self._onehot)


def _replace_columns(y: mx.array, h: mx.array, rows: mx.array, onehot: mx.array) -> mx.array:
    onehot = onehot.astype(y.dtype)
    col = onehot.sum(0)  # 1 at the replaced columns
    new = (h @ rows.astype(h.dtype).T).astype(y.dtype) @ onehot
    return y * (1 - col) + new


def _vocab_size(layer: nn.Module) -> int:
    return int(layer.weight.shape[0])


def dense_weight(layer: nn.Module) -> mx.array:
    if isinstance(layer, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
        return mx.dequantize(layer.weight, layer.scales, layer.biases, group_size=layer.group_size, bits=layer.bits, mode=layer.mode)
    return layer.weight


def _base_rows(layer: nn.Module, ids: list[int]) -> mx.array:
    return dense_weight(layer)[mx.array(ids)].astype(mx.float32)


def output_layer_name(model: nn.Module) -> str | None:
    """``lm_head`` for untied models, ``None`` when the output reuses the embedding."""
    return "lm_head" if "lm_head" in dict(model.named_modules()) else None


def embedding_name(model: nn.Module) -> str:
    names = dict(model.named_modules())
    for name in ("model.embed_tokens", "language_model.model.embed_tokens", "transformer.wte", "model.embed"):
        if name in names:
            return name
    hits = [n for n, m in names.items() if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding))]
    if len(hits) != 1:
        raise ValueError(f"cannot tell which module is the token embedding (found {hits})")
    return hits[0]


def add_token_rows(model: nn.Module, ids: list[int], rows: dict[str, mx.array] | None = None) -> list[str]:
    """Wrap the embedding (and an untied ``lm_head``) so the rows of ``ids`` are trainable. Returns the wrapped names."""
    rows = rows or {}
    modules = dict(model.named_modules())
    emb = embedding_name(model)
    wrapped = [(emb, TokenRowsEmbedding(modules[emb], ids, rows.get(f"{emb}.rows")))]
    head = output_layer_name(model)
    if head is not None:
        wrapped.append((head, TokenRowsLinear(modules[head], ids, rows.get(f"{head}.rows"))))
    model.update_modules(tree_unflatten(wrapped))
    return [name for name, _ in wrapped]


def adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """(path, adapter module, base module) for every LoRA/DoRA/token-rows module in ``model``."""
    from mlx_lm.tuner.dora import DoRAEmbedding, DoRALinear
    from mlx_lm.tuner.lora import LoRAEmbedding, LoRALinear, LoRASwitchLinear

    out = []
    for name, m in model.named_modules():
        if isinstance(m, (LoRALinear, DoRALinear, LoRASwitchLinear)):
            out.append((name, m, m.linear))
        elif isinstance(m, (LoRAEmbedding, DoRAEmbedding)):
            out.append((name, m, m.embedding))
        elif isinstance(m, (TokenRowsEmbedding, TokenRowsLinear)):
            out.append((name, m, m.base))
    return out


@contextmanager
def adapters_disabled(model: nn.Module):
    """Run ``model`` as its base model: every adapter module is swapped for the layer it wraps, then restored."""
    found = adapter_modules(model)
    if not found:
        yield model
        return
    model.update_modules(tree_unflatten([(name, base) for name, _, base in found]))
    try:
        yield model
    finally:
        model.update_modules(tree_unflatten([(name, ad) for name, ad, _ in found]))


def adapter_weights(model: nn.Module) -> tuple[dict[str, mx.array], dict[str, mx.array]]:
    """(LoRA/DoRA tensors for ``adapters.safetensors``, token rows for ``token_rows.safetensors``)."""
    params = dict(tree_flatten(model.trainable_parameters()))
    lora = {k: v for k, v in params.items() if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "m")}
    rows = {k: v for k, v in params.items() if k.endswith(".rows")}
    return lora, rows


def read_adapter_config(path: Path) -> dict:
    try:
        return json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        from ..errors import InvalidModelError

        raise InvalidModelError(
            f"cannot read {Path(path) / CONFIG_FILE}: {err}", hint="an MLX adapter directory holds adapter_config.json and adapters.safetensors"
        ) from None


def apply_adapter(model: nn.Module, path: Path) -> nn.Module:
    """Apply an MLX adapter directory to a loaded base model: LoRA/DoRA layers, then token rows."""
    from mlx_lm.tuner.utils import load_adapters

    path = Path(path)
    config = read_adapter_config(path)
    load_adapters(model, str(path))  # mlx-lm: layers + strict shape checks
    rows_file = path / ROWS_FILE
    if rows_file.is_file():
        ids = (config.get("preflexor") or {}).get("token_rows", {}).get("ids")
        if not ids:
            from ..errors import InvalidModelError

            raise InvalidModelError(f"{rows_file} exists but {path / CONFIG_FILE} lists no token ids under preflexor.token_rows.ids")
        add_token_rows(model, ids, mx.load(str(rows_file)))
    model.eval()
    return model
