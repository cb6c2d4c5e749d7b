"""The old import path of ``train/trl/peft.py`` (PEFT around the model the TRL engine trains)."""

from __future__ import annotations

from .trl.peft import fast_trainable_tokens, lora_targets, wrap_model  # noqa: F401
