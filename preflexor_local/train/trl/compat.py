"""The one place that imports TRL (tested: trl 1.16; ORPO lives in ``trl.experimental.orpo``).

If TRL moves a class again, this file is the only edit. Everything here
imports lazily and is cached.
"""

from __future__ import annotations

import warnings
from functools import lru_cache


@lru_cache(maxsize=1)
def orpo():
    """(ORPOConfig, ORPOTrainer)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "experimental APIs may change": that is why this module exists
        try:
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        except ImportError:  # TRL < 1.0 exported it at the top level
            from trl import ORPOConfig, ORPOTrainer
    return ORPOConfig, ORPOTrainer


@lru_cache(maxsize=1)
def dpo():
    """(DPOConfig, DPOTrainer, DataCollatorForPreference)."""
    from trl import DPOConfig, DPOTrainer
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    return DPOConfig, DPOTrainer, DataCollatorForPreference


def loss_list(loss: str) -> list[str]:
    """DPOConfig.loss_type is a list in TRL >= 1.0."""
    return [loss]


@lru_cache(maxsize=1)
def selective_log_softmax():
    """TRL's memory-light log p(label) over a large vocabulary."""
    from trl.trainer.utils import selective_log_softmax

    return selective_log_softmax
