"""Converters (``preflexor_local.convert``; the ``convert/`` folder of a checkout).

Library entry points (each module is also a script: ``python convert/<module>.py --help``):

* ``add_thinking_tokens(model, tokenizer, fmt)`` / ``add_thinking_tokens_to_dir(src, out)`` — tokens.py
* ``convert_to_gguf(src, out, outtype)`` — hf_to_gguf.py (vocabulary: gguf_vocab.py, K-quants: quantize.py)
* ``convert_to_mlx(src, out, quantize=..., q_bits=..., q_group_size=...)`` — hf_to_mlx.py
* ``merge_adapter(base, adapter, out)`` — merge.py
* ``gguf_to_hf(gguf_path, out)`` — gguf_to_hf.py (``from preflexor_local.convert.gguf_to_hf import gguf_to_hf``)
* ``verify(hf_dir, gguf_path, mlx_dir) -> VerifyReport`` — verify.py (``from preflexor_local.convert.verify import verify``)

The names whose module has another name resolve here too, lazily, so importing
this package costs nothing (``gguf_to_hf`` and ``verify`` share their module's
name and are imported from the module itself).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "add_thinking_tokens": "tokens",
    "add_thinking_tokens_to_dir": "tokens",
    "convert_to_gguf": "hf_to_gguf",
    "convert_to_mlx": "hf_to_mlx",
    "merge_adapter": "merge",
    "quantize_gguf": "quantize",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(name)
