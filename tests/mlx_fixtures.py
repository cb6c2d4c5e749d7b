"""Helpers for the MLX tests: preference pairs, a training config, ``_convert`` (mlx_lm.convert, fp32 or 4-bit).

Import with ``from mlx_fixtures import *`` in a test module. The MLX models themselves (``tiny_mlx``,
``tiny_mlx_q4``, ``tiny_mlx_notags``) are session fixtures in ``conftest.py``, built once. Every test module
that uses them skips as a whole where MLX is not installed (the issue's rule for machines MLX does not support).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

PAIRS = [
    {
        "prompt": "Why is spider silk tough?",
        "chosen": "<|thinking|>beta sheets and amorphous chains share the load<|/thinking|>Because of its hierarchical structure.",
        "rejected": "<|thinking|>no idea<|/thinking|>It is not tough.",
    },
    {
        "prompt": "How does nacre stop cracks?",
        "chosen": "<|thinking|>layered tablets deflect cracks<|/thinking|>Layered aragonite tablets deflect them.",
        "rejected": "It does not.",
    },
    {
        "prompt": "What makes bone strong?",
        "chosen": "<|thinking|>stiff mineral and soft collagen<|/thinking|>Mineral platelets with collagen fibrils.",
        "rejected": "<|thinking|>bones are white<|/thinking|>Calcium only.",
    },
    {
        "prompt": "Why do materials fail gracefully?",
        "chosen": "<|thinking|>energy spreads over scales<|/thinking|>Energy is dissipated across many length scales.",
        "rejected": "<|thinking|>they do not<|/thinking|>They never fail.",
    },
]


def _convert(hf: Path, out: Path, quantize: bool = False) -> Path:
    from mlx_lm import convert

    shutil.rmtree(out, ignore_errors=True)
    if quantize:
        convert(str(hf), str(out), quantize=True, q_group_size=64, q_bits=4)
    else:
        convert(str(hf), str(out), dtype="float32")
    return out


@pytest.fixture
def pairs():
    from preflexor_local.train.data import pair_from_obj

    return [pair_from_obj(p, "<test>", i + 1) for i, p in enumerate(PAIRS)]


def train_config(model: Path, out: Path, **kw):
    from preflexor_local.train.config import TrainConfig

    base = dict(model=str(model), output=str(out), rank=4, alpha=8, dropout=0.0, batch_size=2, grad_accum=1, max_length=256, seed=0, log_every=1)
    base.update(kw)
    return TrainConfig(**base)
