"""The MLX engine: mlx-lm models and LoRA/DoRA layers (QLoRA on quantized MLX bases); Metal on Apple silicon, CPU elsewhere."""

from __future__ import annotations

from . import TrainEngine

ENGINE = TrainEngine(
    name="mlx",
    summary="MLX + mlx-lm LoRA/DoRA/QLoRA (Apple silicon; CPU elsewhere, slow): SFT, ORPO, DPO sigmoid and exo_pair",
    runner="preflexor_local.train.engines.mlx:open_session",
    requires=("mlx", "mlx_lm"),
    extra="mlx",
    methods=("orpo", "dpo", "sft"),
)


def open_session(config, ctx):
    """The ``TrainSession`` for ``train … --engine mlx`` (see ``train/session.py``)."""
    from ..mlx.trainer import MLXTrainer

    return MLXTrainer(config, ctx)
