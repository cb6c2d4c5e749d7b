"""The TRL engine: PyTorch + TRL + PEFT on CUDA (bf16), MPS or CPU; multi-GPU via ``accelerate launch``."""

from __future__ import annotations

from . import TrainEngine

ENGINE = TrainEngine(
    name="trl",
    summary="PyTorch + TRL + PEFT (CUDA, MPS, CPU; accelerate launch for several GPUs)",
    runner="preflexor_local.train.trl:open_session",
    requires=("torch", "transformers", "trl", "peft"),
    extra="train",
)
