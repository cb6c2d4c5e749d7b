"""TRL's trainers over our pre-tokenised rows and label masks, and the metrics callback (built lazily, after TRL).

* ``MaskingPreferenceCollator``: DPO's batch with ``masks.scored_positions`` as TRL's ``completion_mask``
  (partial masks re-drawn at every batch).
* ``dpo_trainer_class`` / ``orpo_trainer_class``: TRL's trainers, subclassed once TRL is imported; ORPO's
  ``tokenize_row`` uses our ids and mask rule, its forward runs the output layer only where a label is scored.
"""

from __future__ import annotations

import sys

from ..masks import IGNORE, MaskRule, MaskStats, draw_rng, end_label_at, end_weight_rows, scored_positions
from ..session import RunContext
from . import compat


def _pad(seqs, value, torch):
    width = max(len(s) for s in seqs)
    return torch.tensor([list(s) + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


class MaskingPreferenceCollator:
    """TRL's preference batch (chosen rows, then rejected rows) with our label mask in ``completion_mask``."""

    def __init__(self, pad_token_id: int, rule: MaskRule, seed: int):
        self.pad_token_id = pad_token_id
        self.rule = rule
        self.seed = seed
        self.calls = 0
        self.stats = MaskStats()

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        self.calls += 1
        ids, masks = [], []
        for side in ("chosen_ids", "rejected_ids"):
            for ex in examples:
                seq = list(ex["prompt_ids"]) + list(ex[side])
                rng = draw_rng(self.seed, self.calls, int(ex.get("row", 0)) * 2 + (side == "rejected_ids"))
                keep = scored_positions(seq, len(ex["prompt_ids"]), self.rule, rng, self.stats)
                ids.append(seq)
                masks.append([int(k) for k in keep])
        return {
            "input_ids": _pad(ids, self.pad_token_id, torch),
            "attention_mask": _pad([[1] * len(s) for s in ids], 0, torch),
            "completion_mask": _pad(masks, 0, torch),
        }


_CLASSES: dict[str, type] = {}


def dpo_trainer_class():
    if "dpo" not in _CLASSES:
        _, DPOTrainer, _ = compat.dpo()

        class PreflexorDPOTrainer(DPOTrainer):
            """DPOTrainer over our pre-tokenised rows; labels masked by ``MaskingPreferenceCollator``."""

            captured: list | None = None  # tests: the batches the loss actually saw

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                # TRL takes a PEFT model that already has an adapter for one being re-trained and copies it as
                # the reference ("ref"). Ours is the adapter this run trains: its reference is the model without
                # it (the checkpoint passed, normally merged Phase I). With the copy, round 2 of a run failed
                # ("Adapter with name 'ref' already exists") and a resumed run scored against its last checkpoint.
                unwrapped = self.accelerator.unwrap_model(self.model)
                if "ref" in getattr(unwrapped, "peft_config", {}):
                    unwrapped.delete_adapter("ref")

            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset  # already rendered, tokenised and length-checked by Encoder

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                if self.captured is not None:
                    self.captured.append(_snapshot(inputs))
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        _CLASSES["dpo"] = PreflexorDPOTrainer
    return _CLASSES["dpo"]


def orpo_trainer_class():
    if "orpo" not in _CLASSES:
        _, ORPOTrainer = compat.orpo()

        class PreflexorORPOTrainer(ORPOTrainer):
            """ORPOTrainer whose ``tokenize_row`` uses our ids and mask rule."""

            mask_rule: MaskRule = MaskRule()
            mask_seed: int = 0
            mask_stats: MaskStats | None = None
            sft_only: bool = False
            end_weight: float = 1.0
            captured: list | None = None

            def tokenize_row(self, feature, model=None):
                prompt_ids = list(feature["prompt_ids"])
                out = {"prompt_input_ids": prompt_ids, "prompt_attention_mask": [1] * len(prompt_ids)}
                for side, key in (("chosen", "chosen_ids"), ("rejected", "rejected_ids")):
                    seq = prompt_ids + list(feature[key])
                    rng = draw_rng(self.mask_seed, 0, int(feature.get("row", 0)) * 2 + (side == "rejected"))
                    keep = scored_positions(seq, len(prompt_ids), self.mask_rule, rng, self.mask_stats)
                    out[f"{side}_input_ids"] = seq
                    out[f"{side}_attention_mask"] = [1] * len(seq)
                    out[f"{side}_labels"] = [t if k else IGNORE for t, k in zip(seq, keep)]
                out["chosen_end_at"] = end_label_at(len(prompt_ids), int(feature.get("chosen_end", -1)), out["chosen_labels"])
                return out

            def _end_weights(self, batch, labels):
                """``masks.end_weight_rows`` of the chosen rows as a tensor (None when the weight is 1)."""
                rows = end_weight_rows([int(a) for a in batch.get("chosen_end_at", ())], labels.shape[1], self.end_weight)
                if not rows:
                    return None
                import torch

                return torch.tensor(rows, dtype=torch.float32, device=labels.device)

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                if self.captured is not None:
                    self.captured.append(_snapshot(inputs))
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

            def concatenated_forward(self, model, batch):
                """TRL's ORPO forward, with output logits only where a label is scored.

                The output layer is the largest matmul of a small model (Gemma 3 270M:
                262k x 640, more than the transformer blocks), and prompts (critic and
                integrator tasks) are most of a sequence: only positions whose next token
                is scored in some row of the batch go through it (``logits_to_keep``).
                The SFT term is the NLL of the scored reply tokens, as the ORPO paper
                defines it; TRL scores the prompt too, which teaches a model to write
                prompts.
                """
                cb = self.concatenated_inputs(batch, is_encoder_decoder=False, padding_value=self.padding_value, device=self.accelerator.device)
                n_chosen = batch["chosen_labels"].shape[0]
                labels = cb["concatenated_labels"]
                mean, logits, nll = _scored_forward(
                    model, cb["concatenated_input_ids"], cb["concatenated_attention_mask"], labels, n_chosen, self._end_weights(batch, labels)
                )
                return mean[:n_chosen], mean[n_chosen:], logits[:n_chosen], logits[n_chosen:], nll

            def get_batch_loss_metrics(self, model, batch, train_eval="train"):
                if not self.sft_only:
                    return super().get_batch_loss_metrics(model, batch, train_eval)
                # SFT: the chosen reply's NLL only, so the rejected rows are never run through the
                # model (half the forward and backward of an ORPO step with beta 0).
                device = self.accelerator.device
                ids, att, labels = (batch[f"chosen_{k}"].to(device) for k in ("input_ids", "attention_mask", "labels"))
                mean, _, nll = _scored_forward(model, ids, att, labels, ids.shape[0], self._end_weights(batch, labels))
                prefix = "eval_" if train_eval == "eval" else ""
                return nll, {f"{prefix}nll_loss": nll.item(), f"{prefix}logps/chosen": mean.detach().mean().item()}

        _CLASSES["orpo"] = PreflexorORPOTrainer
    return _CLASSES["orpo"]


def _snapshot(inputs: dict) -> dict:
    """A copy of a trainer batch for tests (tensors detached to the CPU; lists as they are)."""
    return {k: v.detach().cpu().clone() if hasattr(v, "detach") else list(v) for k, v in inputs.items() if hasattr(v, "detach") or isinstance(v, list)}


def _scored_forward(model, input_ids, attention_mask, labels, n_nll: int, weights=None):
    """(mean log p per row, logits at the kept positions, NLL of the first ``n_nll`` rows' scored tokens).

    Only positions whose next token is scored in some row go through the output layer. ``weights``
    (shape of ``labels[:, 1:]``, first ``n_nll`` rows) weights the NLL's tokens: a weighted mean,
    so the loss keeps its scale; the per-row means (ORPO's odds) stay unweighted.
    """
    import torch

    target = labels[:, 1:]
    keep = (target != IGNORE).any(0).nonzero().squeeze(-1)
    out = model(input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=keep)
    target = target[:, keep]
    scored = target != IGNORE
    logps = compat.selective_log_softmax()(out.logits, torch.where(scored, target, 0)) * scored
    count = scored.sum(-1).clamp(min=1)
    if weights is None:
        nll = -logps[:n_nll].sum() / count[:n_nll].sum()
    else:
        w = weights[:n_nll, keep] * scored[:n_nll]
        nll = -(logps[:n_nll] * w).sum() / w.sum().clamp(min=1)
    return logps.sum(-1) / count, out.logits, nll


def metrics_callback(ctx: RunContext, offset: int, sink: list, label: str):
    """Metrics to ``ctx.log`` (-> metrics.jsonl) and a progress bar on stderr (TRL's own printers are removed)."""
    from transformers import TrainerCallback

    class ForwardMetrics(TrainerCallback):
        bar = None

        def on_train_begin(self, args, state, control, **kw):
            if not ctx.quiet:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=state.max_steps, desc=label, unit="step", file=sys.stderr, leave=False)

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(1)

        def on_log(self, args, state, control, logs=None, **kw):
            if not logs or "loss" not in logs:
                return
            row = {"step": offset + state.global_step, **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}}
            sink.append(row)
            ctx.log(row)
            if self.bar is not None:
                self.bar.set_postfix({k.split("/")[-1]: f"{row[k]:.4g}" for k in ("loss", "rewards/margins") if k in row})

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()

    return ForwardMetrics()
