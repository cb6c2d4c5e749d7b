"""Where torch work runs: one rule for inference, embeddings and training (CUDA, then MPS, then CPU)."""

from __future__ import annotations

from .errors import UsageError

_DTYPES = ("float32", "float16", "bfloat16")


def pick_device(requested: str | None = "auto") -> str:
    import torch

    if requested and requested != "auto":
        if requested.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {requested} was asked for but torch sees no CUDA device", hint="use --device auto or cpu")
        if requested == "mps" and not torch.backends.mps.is_available():
            raise UsageError("--device mps was asked for but MPS is not available", hint="use --device auto or cpu")
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(requested: str, device: str, training: bool = False):
    """``auto``: bf16 on CUDA that has it; for inference fp16 on other GPUs and MPS; fp32 on CPU.

    Training never picks fp16 by itself (it needs loss scaling) and so falls back to fp32.
    """
    import torch

    if requested != "auto":
        if requested not in _DTYPES:
            raise UsageError(f"unknown dtype {requested!r}", hint=f"use auto, {', '.join(_DTYPES)}")
        return getattr(torch, requested)
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if not training and (device.startswith("cuda") or device == "mps"):
        return torch.float16
    return torch.float32
