"""What a train engine provides to the shared loop (``preflexor_local.train.run``).

The loop is engine-agnostic: it owns rounds, data (fixed or regenerated each
round), checkpoint directories, resume and the metrics log. An engine's
``runner`` (see ``engines/__init__.py``) is called as ``runner(config, ctx)``
and returns a ``TrainSession``:

* ``train_round(pairs, steps, round_index) -> dict``: train ``steps`` optimizer
  steps on ``pairs``; call ``ctx.log(metrics_dict)`` as it goes (one dict per
  logging step with at least ``step`` and ``loss``); return a summary dict
  (e.g. ``{"loss": ..., "truncated_rejected": ..., "dropped_long": ...}``).
* ``save_checkpoint(path)``: write everything needed to continue (adapter or
  weights, tokenizer, optimizer/scheduler state) into ``path`` (an empty
  temporary directory the loop renames into place atomically).
* ``student() -> Backend``: the current model as a generation backend, for
  regenerating pairs with the model being trained.
* ``save_final(path, merge=True) -> dict``: the final ``path/adapter`` (PEFT
  format) and, with ``merge``, ``path/merged`` (a full checkpoint), both with the
  tokenizer and the training chat template, loadable by ``ask``/``convert``;
  returns ``{"adapter": ..., "merged": ...}`` (a full fine-tune writes only merged).
* ``close()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .data import PreferencePair


@dataclass
class RunContext:
    output: Path
    resume_from: Path | None = None  # a complete round checkpoint to continue from
    global_step: int = 0  # optimizer steps already done (continued numbering)
    log: Callable[[dict], None] = field(default=lambda m: None)
    quiet: bool = False


class TrainSession(Protocol):
    def train_round(self, pairs: list[PreferencePair], steps: int, round_index: int) -> dict: ...

    def save_checkpoint(self, path: Path) -> None: ...

    def student(self): ...

    def save_final(self, path: Path, merge: bool = True) -> dict: ...

    def close(self) -> None: ...
