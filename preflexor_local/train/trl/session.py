"""One TRL training run (``TRLSession``): load, tag tokens, mask rule, one fresh TRL trainer per round, save."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ...atomic import atomic_dir
from ...devices import pick_device, pick_dtype
from ...errors import InvalidModelError, UsageError
from ...format import ThinkingFormat
from ..config import TrainConfig
from ..data import PreferencePair
from ..encode import Encoder, tag_ids, training_template
from ..masks import MaskRule, MaskStats
from ..resolve import model_dir, model_name
from ..session import RunContext
from . import compat
from .peft import wrap_model
from .trainers import MaskingPreferenceCollator, dpo_trainer_class, metrics_callback, orpo_trainer_class


def add_tags(model, tokenizer, fmt: ThinkingFormat) -> list[int]:
    """Make the tags single special tokens (the shared converter helper) and return their ids."""
    from preflexor_local.convert.tokens import add_thinking_tokens

    return add_thinking_tokens(model, tokenizer, fmt)


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
        callback = metrics_callback(self.ctx, self.ctx.global_step, logs, f"{cfg.method} round {round_index + 1}")
        if cfg.is_dpo:
            DPOConfig, _, _ = compat.dpo()
            args = DPOConfig(loss_type=compat.loss_list(cfg.loss), label_smoothing=cfg.label_smoothing, **common)
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
            ORPOConfig, _ = compat.orpo()
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
        from ...backends.transformers import TransformersBackend

        self.model.eval()
        return TransformersBackend.from_loaded(self.model, self.tokenizer, self.template, self.base_path, name=f"{model_name(self.base_path)} (training)")

    def close(self) -> None:
        self.model = None
        self.ref_model = None
        self.last_trainer = None


def open_session(cfg: TrainConfig, ctx: RunContext) -> TRLSession:
    """The ``trl`` engine's runner (see ``engines/__init__.py``)."""
    return TRLSession(cfg, ctx)
