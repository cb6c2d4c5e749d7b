"""The old import path of ``train/trl/compat.py`` (the one place that imports TRL)."""

from __future__ import annotations

from .trl.compat import dpo, loss_list, orpo, selective_log_softmax  # noqa: F401
