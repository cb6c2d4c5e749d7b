"""The TRL engine: Phase I ORPO, Phase II DPO-family (EXO by default), SFT, with PEFT LoRA/DoRA or full fine-tune.

Its parts: ``compat`` (the one place that imports TRL), ``peft`` (the adapter around the model),
``trainers`` (TRL's trainers over our ids and masks, the metrics callback) and ``session``
(``TRLSession``: one run, registered as the ``trl`` engine in ``engines/``).

How each step maps onto TRL 1.16 (imported only through ``compat``):

* **Tokenisation and the length policy are the shared ones** (``encode.Encoder``:
  the inference prompt, the transformers backend's ids; a pair whose chosen
  reply does not fit is dropped and counted, a rejected reply is cut and
  counted); TRL only receives the ids (``_prepare_dataset`` is a no-op).
* **Labels come from ``masks.scored_positions``**: for DPO inside our collator
  (so partial masks are re-drawn at every batch: ``draw_rng(seed, call, row)``),
  turned into TRL's ``completion_mask`` (TRL sets labels to -100 where it is 0);
  for ORPO/SFT in ``tokenize_row`` (ORPO's hook), as ``*_labels``.
* **Tags**: with ``tag_tokens = "add"`` the four tags must be single tokens; if
  they are not, they are added with the shared ``add_thinking_tokens`` helper
  and their embedding (and untied output) rows are trained (``peft``).
* **DPO reference**: with an adapter, the adapter-disabled model (i.e. the
  checkpoint you pass, normally the merged Phase I model); full fine-tune loads
  a frozen copy.
* **SFT** shares ORPO's rows and labels; its loss is the chosen reply's NLL only,
  and the rejected rows are never run through the model.
* Each round builds a fresh TRL trainer on the same model (constant LR; the
  optimizer restarts every round, as in the reference), so a round boundary is
  a complete, resumable state.
* **The student** that answers during pair generation is the transformers
  backend over the live model (``TransformersBackend.from_loaded``): the same
  sampler as ``ask``.
"""

from __future__ import annotations

from .session import TRLSession, add_tags, open_session
from .trainers import MaskingPreferenceCollator, dpo_trainer_class, orpo_trainer_class

__all__ = ["MaskingPreferenceCollator", "TRLSession", "add_tags", "dpo_trainer_class", "open_session", "orpo_trainer_class"]
