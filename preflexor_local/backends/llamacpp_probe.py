"""The probe child: does llama.cpp's CPU "extra buffer" path (AMX on Xeons) decode without dying?

Run as ``python -m preflexor_local.backends.llamacpp_probe DIR``. It writes a one-block llama-architecture model
with random f32 weights (``write_tiny_gguf``; numpy only, no ``gguf`` package), quantises it to Q4_K_M with
llama.cpp's own quantizer (the default model's types: tiny f32 models never take the AMX path), loads it with
llama.cpp's default parameters (extra buffer types on) and decodes a prompt and a few tokens on as many threads
as a real load uses. Exit 0: the path works. Killed by a signal: it crashes this CPU (``llamacpp_load`` decides).
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

# GGUF value and tensor types (the GGUF spec's numbering)
_U32, _I32, _F32, _STR, _ARR = 4, 5, 6, 8, 9
_GGML_F32 = 0
_ALIGN = 32

DIM, FF, HEADS, CTX = 256, 256, 4, 256  # rows a multiple of 256, so K-quants apply to every matrix


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, kind: int, value) -> bytes:
    out = _str(key) + struct.pack("<I", kind)
    if kind == _STR:
        return out + _str(value)
    if kind == _ARR:
        item, values = value
        body = b"".join(_str(v) if item == _STR else struct.pack({_F32: "<f", _I32: "<i"}[item], v) for v in values)
        return out + struct.pack("<IQ", item, len(values)) + body
    return out + struct.pack({_U32: "<I", _F32: "<f"}[kind], value)


def write_tiny_gguf(path: str | Path, seed: int = 0) -> Path:
    """A 1-block llama model (SentencePiece vocabulary of 3 specials and 256 byte tokens), f32, random weights."""
    import numpy as np

    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [2, 3, 3, *([6] * 256)]  # unknown, control, control, byte
    n_vocab = len(tokens)
    kvs = [
        _kv("general.architecture", _STR, "llama"),
        _kv("general.name", _STR, "preflexor-probe"),
        _kv("llama.context_length", _U32, CTX),
        _kv("llama.embedding_length", _U32, DIM),
        _kv("llama.block_count", _U32, 1),
        _kv("llama.feed_forward_length", _U32, FF),
        _kv("llama.attention.head_count", _U32, HEADS),
        _kv("llama.attention.head_count_kv", _U32, HEADS),
        _kv("llama.rope.dimension_count", _U32, DIM // HEADS),
        _kv("llama.attention.layer_norm_rms_epsilon", _F32, 1e-5),
        _kv("tokenizer.ggml.model", _STR, "llama"),
        _kv("tokenizer.ggml.tokens", _ARR, (_STR, tokens)),
        _kv("tokenizer.ggml.scores", _ARR, (_F32, [0.0] * n_vocab)),
        _kv("tokenizer.ggml.token_type", _ARR, (_I32, types)),
        _kv("tokenizer.ggml.unknown_token_id", _U32, 0),
        _kv("tokenizer.ggml.bos_token_id", _U32, 1),
        _kv("tokenizer.ggml.eos_token_id", _U32, 2),
    ]
    rng = np.random.default_rng(seed)
    shapes = {"token_embd.weight": (n_vocab, DIM), "output_norm.weight": (DIM,), "output.weight": (n_vocab, DIM)}
    block = {"attn_norm": (DIM,), "attn_q": (DIM, DIM), "attn_k": (DIM, DIM), "attn_v": (DIM, DIM), "attn_output": (DIM, DIM)}
    block |= {"ffn_norm": (DIM,), "ffn_gate": (FF, DIM), "ffn_up": (FF, DIM), "ffn_down": (DIM, FF)}
    shapes |= {f"blk.0.{k}.weight": v for k, v in block.items()}
    infos, blobs, offset = [], [], 0
    for name, shape in shapes.items():
        data = np.ones(shape, np.float32) if len(shape) == 1 else rng.normal(0, 0.05, shape).astype(np.float32)
        raw = data.tobytes()
        # GGUF lists dimensions innermost first: a (rows, cols) array is (cols, rows) there.
        infos.append(
            _str(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in reversed(shape)) + struct.pack("<IQ", _GGML_F32, offset)
        )
        pad = (-len(raw)) % _ALIGN
        blobs.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    head = b"GGUF" + struct.pack("<IQQ", 3, len(shapes), len(kvs)) + b"".join(kvs) + b"".join(infos)
    head += b"\0" * ((-len(head)) % _ALIGN)
    path = Path(path)
    path.write_bytes(head + b"".join(blobs))
    return path


def probe(work: str | Path, threads: int) -> None:
    """Quantise the tiny model and decode with it under llama.cpp's default (extra buffer) parameters."""
    from preflexor_local.convert.quantize import quantize_gguf

    from .llamacpp_load import open_llama

    work = Path(work)
    src = write_tiny_gguf(work / "probe-f32.gguf")
    quantize_gguf(src, work / "probe-q4_k_m.gguf", "q4_k_m", threads=threads, quiet=True)
    llm = open_llama(work / "probe-q4_k_m.gguf", extra_bufts=True, n_ctx=CTX, n_batch=64, n_threads=threads, n_threads_batch=threads)
    llm.eval([1, *range(3, 40)])  # a prompt: the batched matmul path
    for token in (40, 41, 42, 43):  # then single tokens: the vector path
        llm.eval([token])
    llm.close()


if __name__ == "__main__":
    probe(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 2)
