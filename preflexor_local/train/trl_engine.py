"""The TRL engine: Phase I ORPO, Phase II DPO-family (EXO by default), SFT, with PEFT LoRA/DoRA or full fine-tune.

How each step maps onto TRL 1.16 (imported only through ``trl_compat``):

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
  and their embedding (and untied output) rows are trained (``trl_peft``).
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

import sys
import time
from pathlib import Path

from ..atomic import atomic_dir
from ..devices import pick_device, pick_dtype
from ..errors import InvalidModelError, UsageError
from ..format import ThinkingFormat
from . import trl_compat
from .config import TrainConfig
from .data import PreferencePair
from .encode import Encoder, tag_ids, training_template
from .masks import IGNORE, MaskRule, MaskStats, draw_rng, end_label_at, end_weight_rows, scored_positions
from .resolve import model_dir, model_name
from .session import RunContext
from .trl_peft import wrap_model


def add_tags(model, tokenizer, fmt: ThinkingFormat) -> list[int]:
    """Make the tags single special tokens (the shared converter helper) and return their ids."""
    from preflexor_local.convert.tokens import add_thinking_tokens

    return add_thinking_tokens(model, tokenizer, fmt)


# -- trainers (subclasses built lazily, after TRL is imported) -----------------


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
        _, DPOTrainer, _ = trl_compat.dpo()

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
        _, ORPOTrainer = trl_compat.orpo()

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
    logps = _selective_log_softmax()(out.logits, torch.where(scored, target, 0)) * scored
    count = scored.sum(-1).clamp(min=1)
    if weights is None:
        nll = -logps[:n_nll].sum() / count[:n_nll].sum()
    else:
        w = weights[:n_nll, keep] * scored[:n_nll]
        nll = -(logps[:n_nll] * w).sum() / w.sum().clamp(min=1)
    return logps.sum(-1) / count, out.logits, nll


def _selective_log_softmax():
    from trl.trainer.utils import selective_log_softmax  # memory-light log p(label) over a large vocabulary

    return selective_log_softmax


def _metrics_callback(ctx: RunContext, offset: int, sink: list, label: str):
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


# -- the session ----------------------------------------------------------------


class TRLSession:
    def __init__(self, cfg: TrainConfig, ctx: RunContext):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        self.cfg, self.ctx = cfg, ctx
        self.fmt = ThinkingFormat.preset(cfg.tags)
        src = model_dir(cfg.model)
        self.base_path = src
        resume = ctx.resume_from
        tok_src = resume if resume is not None and (resume / "tokenizer_config.json").is_file() else src
        self.device = pick_device(cfg.device)
        self.dtype = pick_dtype(cfg.dtype, self.device, training=True)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tok_src, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, dtype=self.dtype)
        except (OSError, ValueError) as err:
            raise InvalidModelError(f"cannot load the checkpoint in {src}: {str(err).splitlines()[0]}") from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        ids = tag_ids(self.tokenizer, self.fmt)
        self.added_tags = False
        if cfg.tag_tokens == "add" and (ids is None or len(self.tokenizer) > model.get_input_embeddings().weight.shape[0]):
            ids = add_tags(model, self.tokenizer, self.fmt)
            self.added_tags = True
        self.tag_ids = ids or []
        model_type = getattr(model.config, "model_type", None)
        self.template = training_template(cfg, self.tokenizer, model_type, model_name(src))
        self.tokenizer.chat_template = self.template.source  # the saved model renders as it was trained
        self.encoder = Encoder(self.tokenizer, self.template, cfg.max_length)
        close = (ids[1],) if ids else tuple(self.tokenizer.encode(self.fmt.think_end, add_special_tokens=False))
        self.rule = MaskRule(
            mask_thinking=bool(cfg.mask_thinking),
            close_ids=close,
            keep_close_tag=cfg.keep_close_tag,
            partial_p=cfg.partial_mask_p,
            on_missing_close=cfg.on_missing_close,
        )
        self.mask_stats = MaskStats()
        self.model = wrap_model(model, cfg, self.tag_ids, resume, self.dtype)
        self.ref_model = None
        if cfg.is_dpo and cfg.adapter == "none":
            self.ref_model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, dtype=self.dtype)
            if len(self.tokenizer) > self.ref_model.get_input_embeddings().weight.shape[0]:
                self.ref_model.resize_token_embeddings(self.model.get_input_embeddings().weight.shape[0])
        torch.manual_seed(cfg.seed)

    # -- TrainSession -------------------------------------------------------
    def train_round(self, pairs: list[PreferencePair], steps: int, round_index: int) -> dict:
        from datasets import Dataset

        cfg = self.cfg
        enc = self.encoder.encode(pairs)
        counts = enc.counts()
        if not enc.rows:
            raise UsageError(
                f"no pair fits --max-length {cfg.max_length} (all {enc.pairs} dropped: prompt + chosen too long)",
                hint="raise --max-length or shorten the teacher's thinking/answer (--max-tokens)",
            )
        if enc.dropped_long and not self.ctx.quiet:
            print(
                f"round {round_index}: {enc.dropped_long} of {enc.pairs} pairs dropped: prompt + chosen longer than --max-length {cfg.max_length}",
                file=sys.stderr,
            )
        dataset = Dataset.from_list(enc.rows)
        logs: list[dict] = []
        out_dir = self.ctx.output / ".trainer"
        common = dict(
            output_dir=str(out_dir),
            max_steps=steps,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.lr,
            lr_scheduler_type="constant" if not cfg.warmup_steps else "constant_with_warmup",
            warmup_steps=cfg.warmup_steps,
            max_grad_norm=cfg.max_grad_norm,
            logging_steps=cfg.log_every,
            save_strategy="no",
            report_to=[],
            seed=cfg.seed + round_index,
            data_seed=cfg.seed + round_index,
            use_cpu=self.device == "cpu",
            bf16=str(self.dtype) == "torch.bfloat16",
            fp16=str(self.dtype) == "torch.float16",
            gradient_checkpointing=cfg.gradient_checkpointing,
            remove_unused_columns=False,
            disable_tqdm=True,
            dataloader_num_workers=0,
            max_length=cfg.max_length,
            beta=cfg.beta,
        )
        callback = _metrics_callback(self.ctx, self.ctx.global_step, logs, f"{cfg.method} round {round_index + 1}")
        if cfg.is_dpo:
            DPOConfig, _, _ = trl_compat.dpo()
            args = DPOConfig(loss_type=trl_compat.loss_list(cfg.loss), label_smoothing=cfg.label_smoothing, **common)
            collator = MaskingPreferenceCollator(self.tokenizer.pad_token_id, self.rule, cfg.seed + 1000 * round_index)
            cls = dpo_trainer_class()
            trainer = cls(
                model=self.model,
                ref_model=self.ref_model,
                args=args,
                train_dataset=dataset,
                processing_class=self.tokenizer,
                data_collator=collator,
                callbacks=[callback],
            )
            stats = collator.stats
        else:
            ORPOConfig, _ = trl_compat.orpo()
            if cfg.method == "sft":
                common["beta"] = 0.0
            args = ORPOConfig(**common)
            cls = orpo_trainer_class()
            stats = MaskStats()
            cls.mask_rule, cls.mask_seed, cls.mask_stats = self.rule, cfg.seed + 1000 * round_index, stats
            trainer = cls(model=self.model, args=args, train_dataset=dataset, processing_class=self.tokenizer, callbacks=[callback])
            trainer.sft_only, trainer.end_weight = cfg.method == "sft", cfg.end_weight  # used by the loss only, after __init__
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        trainer.remove_callback(PrinterCallback)
        trainer.remove_callback(ProgressCallback)  # stdout is for --json; metrics go to metrics.jsonl and the progress bar
        trainer.captured = getattr(self, "capture", None)
        self.last_trainer = trainer
        t0 = time.perf_counter()
        result = trainer.train()
        seconds = time.perf_counter() - t0
        self.model = trainer.model
        self.ctx.global_step += steps
        for k, v in stats.as_dict().items():
            self.mask_stats.__dict__[k] = self.mask_stats.__dict__.get(k, 0) + v
        summary = {
            "round": round_index,
            "steps": steps,
            "global_step": self.ctx.global_step,
            "seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / steps, 4),
            "train_loss": float(result.training_loss),
            **counts,
            "missing_close": stats.missing_close,
            "ignored_thinking_tokens": stats.ignored_thinking_tokens,
        }
        for key in ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"):
            vals = [r[key] for r in logs if key in r]
            if vals:
                summary[key] = vals[-1]
        return summary

    def save_checkpoint(self, path: Path) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def save_final(self, path: Path, merge: bool = True) -> dict:
        """``path/adapter`` (or the full model) and, with an adapter, ``path/merged`` (a full checkpoint)."""
        if self.cfg.adapter == "none":
            self._save(self.model, path / "merged")
            return {"merged": str(path / "merged")}
        self._save(self.model, path / "adapter")
        out = {"adapter": str(path / "adapter")}
        if merge:
            import copy

            merged = copy.deepcopy(self.model).merge_and_unload()
            self._save(merged, path / "merged", generation_config=True)
            out["merged"] = str(path / "merged")
            del merged
        return out

    def _save(self, model, target: Path, generation_config: bool = False) -> None:
        with atomic_dir(target) as tmp:  # a crash never leaves half a model under the final name
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            if generation_config and getattr(model, "generation_config", None) is not None:
                model.generation_config.save_pretrained(tmp)

    def student(self):
        """The live model as the transformers backend, in eval mode (``trainer.train()`` switches it back)."""
        from ..backends.transformers import TransformersBackend

        self.model.eval()
        return TransformersBackend.from_loaded(self.model, self.tokenizer, self.template, self.base_path, name=f"{model_name(self.base_path)} (training)")

    def close(self) -> None:
        self.model = None
        self.ref_model = None
        self.last_trainer = None


def open_session(cfg: TrainConfig, ctx: RunContext) -> TRLSession:
    """The ``trl`` engine's runner (see ``engines/__init__.py``)."""
    return TRLSession(cfg, ctx)
