"""MLX training: SFT, ORPO and DPO/EXO on mlx-lm's model and LoRA/DoRA layers (QLoRA on quantized bases).

Public API (all heavy imports happen inside):

* ``MLXTrainer(config: TrainConfig, ctx=None)``: one run; ``train_round(pairs, steps)``,
  ``save_adapter(dir)``, ``student()`` (an MLX backend on the live weights).
* ``train_mlx(config, pairs, steps=None) -> Path``: load, train, save the adapter; the short way.
* ``add_tokens(model_dir, out_dir, tokens)``: add the thinking tags to an MLX model
  (special tokens, resized and initialised embedding/output rows).
* ``losses``: the objectives (checked against TRL in ``tests/test_mlx_losses.py``).
"""

from __future__ import annotations

from pathlib import Path


def train_mlx(config, pairs, steps: int | None = None, quiet: bool = True) -> Path:
    """Train ``steps`` (default ``config.total_steps``) on ``pairs`` and save the adapter to ``config.output``."""
    from ..session import RunContext
    from .trainer import MLXTrainer

    c = config.resolved()
    trainer = MLXTrainer(c, RunContext(output=Path(c.output), quiet=quiet))
    try:
        trainer.train_round(pairs, steps or c.total_steps, 0)
        trainer.save_final(Path(c.output))
    finally:
        trainer.close()
    return Path(c.output)


def __getattr__(name: str):
    if name == "MLXTrainer":
        from .trainer import MLXTrainer

        return MLXTrainer
    if name == "add_tokens":
        from .tokens import add_tokens

        return add_tokens
    raise AttributeError(name)
