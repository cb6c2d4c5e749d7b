"""The TRL engine's old import path: the engine is the package ``train/trl/`` now (as ``train/mlx/`` is).

Kept for callers of ``preflexor_local.train.trl_engine`` (the engine registry's runner, scripts, tests).
"""

from __future__ import annotations

from .trl import MaskingPreferenceCollator, TRLSession, add_tags, dpo_trainer_class, open_session, orpo_trainer_class  # noqa: F401
