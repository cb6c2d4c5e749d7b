"""Decode any GGUF tensor to float32 rows, and encode float32 rows back into a tensor type, with llama.cpp's own quantizer.

Decoding is ``gguf.quants.dequantize`` (exact: a quantized tensor *is* its
dequantized values). Encoding F32/F16/BF16 is numpy; every quantized type goes
through ``ggml_quantize_chunk`` from the ggml library that llama-cpp-python
ships, the function ``llama_model_quantize`` calls for each tensor (here without
an importance matrix). The ``gguf`` package cannot write K-quants, so it is not
used for them. Re-encoding a tensor that was decoded from the same type gives
back its bytes (measured on Gemma 3 270M: Q5_0 and Q8_0 byte for byte, Q4_K and
Q6_K 98-100 % of the bytes, the rest one rounding step apart), so requantizing
a merged tensor costs one quantization of its change, not a second
quantization of the whole weight.
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

from preflexor_local.errors import BackendUnavailableError, InvalidModelError


@lru_cache(maxsize=1)
def _ggml():
    """The ggml base library of llama-cpp-python, with the three functions this module calls typed."""
    from pathlib import Path

    try:
        import llama_cpp
        import llama_cpp._ctypes_extensions as cx
    except ImportError:
        raise BackendUnavailableError(
            "requantizing merged tensors needs llama-cpp-python, which is not installed", hint="pip install 'preflexor-local[llama]'"
        ) from None
    lib = cx.load_shared_library("ggml-base", Path(llama_cpp.__file__).parent / "lib")
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    return lib


def _floats():
    import gguf

    Q = gguf.GGMLQuantizationType
    return (Q.F32, Q.F16, Q.BF16)


def decode(data, qtype, name: str):
    """The float32 values of a tensor as the reader holds it (numpy order: rows last-axis-contiguous)."""
    import gguf
    import numpy as np

    try:
        return np.asarray(gguf.quants.dequantize(data, qtype), dtype=np.float32)
    except NotImplementedError:
        raise InvalidModelError(
            f"cannot merge into {name}: the gguf package cannot read its type {qtype.name}", hint="merge into an f16 or f32 copy of the base"
        ) from None


def check_encodable(qtype, name: str) -> None:
    """Refuse by name, before any work, a type this module cannot write back."""
    if qtype in _floats():
        return
    if _ggml().ggml_quantize_requires_imatrix(int(qtype)):
        raise InvalidModelError(
            f"cannot requantize {name} to {qtype.name}: llama.cpp needs an importance matrix for that type",
            hint="pass --outtype q4_k_m, q8_0 or f16 to write the merged model in a type that needs none",
        )


def encode(arr, qtype):
    """``arr`` (float32, any leading shape, rows on the last axis) as ``qtype``: a float array or the quantized bytes."""
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == Q.F32:
        return arr
    if qtype == Q.F16:
        return arr.astype(np.float16)
    if qtype == Q.BF16:
        return gguf.quants.quantize(arr, Q.BF16)
    lib = _ggml()
    n_per_row = arr.shape[-1]
    rows = arr.size // n_per_row
    out = np.empty((*arr.shape[:-1], lib.ggml_row_size(int(qtype), n_per_row)), dtype=np.uint8)
    written = lib.ggml_quantize_chunk(int(qtype), arr.ctypes.data, out.ctypes.data, 0, rows, n_per_row, None)
    if written != out.nbytes:
        raise InvalidModelError(f"llama.cpp wrote {written} bytes for a {qtype.name} tensor of {rows} x {n_per_row}, expected {out.nbytes}")
    return out
