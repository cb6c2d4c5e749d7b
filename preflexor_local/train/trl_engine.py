"""The TRL engine: Phase I ORPO, Phase II DPO-family (EXO by default), SFT, with PEFT LoRA/DoRA or full fine-tune.

How each step maps onto TRL 1.16 (imported only through ``trl_compat``):

* **Tokenisation is ours.** Prompts are rendered with ``render_prompt`` (the
  inference renderer) and tokenised like the transformers backend does (no
  automatic special tokens; the model's BOS prefix only if the template did not
  write it). The completion is what tokenising prompt+completion adds after the
  common prefix with the prompt alone.
* **Lengths are checked, never silently cut.** A pair whose prompt + chosen
  reply exceeds ``max_length`` is dropped and counted (``dropped_long``); a
  rejected reply that does not fit is cut at the end and counted
  (``truncated_rejected``).
* **Labels come from ``masks.scored_positions``**: for DPO inside our collator
  (so partial masks are re-drawn at every batch: ``draw_rng(seed, call, row)``),
  turned into TRL's ``completion_mask`` (TRL sets labels to -100 where it is 0);
  for ORPO/SFT in ``tokenize_row`` (ORPO's hook), as ``*_labels``.
* **Tags**: the four tags must be single tokens; if they are not, they are added
  with the shared ``add_thinking_tokens`` helper (convert issue) and their
  embedding (and untied output) rows are trained through PEFT
  ``trainable_token_indices`` (only those rows; tied embeddings stay tied).
* **DPO reference**: with an adapter, the adapter-disabled model (i.e. the
  checkpoint you pass, normally the merged Phase I model); full fine-tune loads
  a frozen copy.
* **SFT** is ORPO with beta = 0: the loss is the chosen reply's NLL only.
* Each round builds a fresh TRL trainer on the same model (constant LR; the
  optimizer restarts every round, as in the reference), so a round boundary is
  a complete, resumable state.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..devices import pick_device, pick_dtype
from ..errors import InvalidModelError, ModelNotFoundError, UsageError
from ..format import ThinkingFormat
from ..prompt import ChatTemplate, choose_template, looks_instruct
from . import trl_compat
from .config import TrainConfig
from .data import PreferencePair, render_pair
from .masks import IGNORE, MaskRule, MaskStats, draw_rng, scored_positions
from .session import RunContext

STATE_FILE = "trainer_state.json"


# -- device, model, tokenizer -------------------------------------------------

def model_dir(spec: str) -> Path:
    """A Hugging Face checkpoint directory for ``spec``; a run output directory means its merged model."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and (path / "merged" / "config.json").is_file():
        return path / "merged"
    if path.is_file() and path.suffix == ".gguf":
        raise InvalidModelError(f"{path} is a GGUF file; training needs a Hugging Face checkpoint",
                                hint="convert it first: preflexor-local convert gguf-to-hf (dense weights), then train that directory")
    if not path.exists():
        raise ModelNotFoundError(f"model {spec} does not exist", hint="pass --model DIR, a Hugging Face checkpoint directory")
    if not (path / "config.json").is_file():
        raise InvalidModelError(f"{path} has no config.json: not a Hugging Face checkpoint", hint="pass the directory that holds config.json and the weights")
    return path


def add_tags(model, tokenizer, fmt: ThinkingFormat) -> list[int]:
    """Make the tags single special tokens (the shared converter helper) and return their ids."""
    from preflexor_local.convert.tokens import add_thinking_tokens

    return add_thinking_tokens(model, tokenizer, fmt)


def tag_ids(tokenizer, fmt: ThinkingFormat) -> list[int] | None:
    ids = []
    for tag in fmt.tags:
        enc = tokenizer.encode(tag, add_special_tokens=False)
        if len(enc) != 1:
            return None
        ids.append(enc[0])
    return ids


def bos_prefix(tokenizer) -> list[int]:
    with_special = tokenizer("a").input_ids
    without = tokenizer("a", add_special_tokens=False).input_ids
    return with_special[: with_special.index(without[0])] if without and without[0] in with_special else []


def training_template(cfg: TrainConfig, tokenizer, model_type: str | None, name: str) -> ChatTemplate:
    return choose_template(
        cfg.chat_template, tokenizer.chat_template, model_type, instruct=looks_instruct(name) or cfg.is_dpo,
        bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "",
        vocab_has=frozenset(t for t in ("<|start_header_id|>", "<|im_start|>") if t in tokenizer.get_vocab()),
    )


# -- tokenisation -------------------------------------------------------------

@dataclass
class Encoded:
    rows: list[dict] = field(default_factory=list)  # prompt_ids, chosen_ids, rejected_ids, row
    pairs: int = 0
    dropped_long: int = 0
    truncated_rejected: int = 0
    dropped_lines: list[int] = field(default_factory=list)

    def counts(self) -> dict:
        return {"pairs_in": self.pairs, "pairs_used": len(self.rows), "dropped_long": self.dropped_long, "truncated_rejected": self.truncated_rejected}


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Encoder:
    """Render + tokenise pairs exactly as inference renders and the transformers backend tokenises."""

    def __init__(self, tokenizer, template: ChatTemplate, max_length: int):
        self.tok = tokenizer
        self.template = template
        self.max_length = max_length
        self.prefix = bos_prefix(tokenizer)

    def encode_text(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False).input_ids
        bos = self.tok.bos_token
        if self.prefix and not (bos and text.startswith(bos)):
            ids = self.prefix + ids
        return ids

    def encode(self, pairs: list[PreferencePair]) -> Encoded:
        out = Encoded(pairs=len(pairs))
        for i, pair in enumerate(pairs):
            prompt, chosen, rejected = render_pair(self.template, pair)
            p = self.encode_text(prompt)
            pc = self.encode_text(prompt + chosen)
            pr = self.encode_text(prompt + rejected)
            n = min(_common_prefix(p, pc), _common_prefix(p, pr), len(p))
            prompt_ids, chosen_ids, rejected_ids = p[:n], pc[n:], pr[n:]
            if n + len(chosen_ids) > self.max_length:
                out.dropped_long += 1
                out.dropped_lines.append(pair.line or i + 1)
                continue
            room = self.max_length - n
            if len(rejected_ids) > room:
                rejected_ids = rejected_ids[:room]
                out.truncated_rejected += 1
            if not chosen_ids or not rejected_ids:
                out.dropped_long += 1
                out.dropped_lines.append(pair.line or i + 1)
                continue
            out.rows.append({"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids, "row": len(out.rows)})
        return out


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

            def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
                return dataset  # already rendered, tokenised and length-checked by Encoder

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                if self.captured is not None:
                    self.captured.append({k: v.detach().cpu().clone() for k, v in inputs.items() if hasattr(v, "detach")})
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
                return out

            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                if self.captured is not None:
                    self.captured.append({k: v.detach().cpu().clone() for k, v in inputs.items() if hasattr(v, "detach")})
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        _CLASSES["orpo"] = PreflexorORPOTrainer
    return _CLASSES["orpo"]


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
        if ids is None or len(self.tokenizer) > model.get_input_embeddings().weight.shape[0]:
            ids = add_tags(model, self.tokenizer, self.fmt)
            self.added_tags = True
        self.tag_ids = ids
        model_type = getattr(model.config, "model_type", None)
        self.template = training_template(cfg, self.tokenizer, model_type, src.name if src.name != "merged" else src.parent.name)
        self.tokenizer.chat_template = self.template.source  # the saved model renders as it was trained
        self.encoder = Encoder(self.tokenizer, self.template, cfg.max_length)
        self.rule = MaskRule(mask_thinking=bool(cfg.mask_thinking), close_id=ids[1], keep_close_tag=cfg.keep_close_tag,
                             partial_p=cfg.partial_mask_p, on_missing_close=cfg.on_missing_close)
        self.mask_stats = MaskStats()
        self.model = self._wrap(model, resume)
        self.ref_model = None
        if cfg.is_dpo and cfg.adapter == "none":
            self.ref_model = AutoModelForCausalLM.from_pretrained(src, local_files_only=True, dtype=self.dtype)
            if len(self.tokenizer) > self.ref_model.get_input_embeddings().weight.shape[0]:
                self.ref_model.resize_token_embeddings(self.model.get_input_embeddings().weight.shape[0])
        torch.manual_seed(cfg.seed)

    def _wrap(self, model, resume: Path | None):
        cfg = self.cfg
        if cfg.adapter == "none":
            if resume is not None:
                from transformers import AutoModelForCausalLM

                model = AutoModelForCausalLM.from_pretrained(resume, local_files_only=True, dtype=self.dtype)
            return model
        from peft import LoraConfig, PeftModel, get_peft_model

        if resume is not None:
            return fast_trainable_tokens(PeftModel.from_pretrained(model, resume, is_trainable=True))
        targets = cfg.target_modules if cfg.target_modules == "all-linear" else [t.strip() for t in cfg.target_modules.split(",") if t.strip()]
        extra = {}
        if cfg.train_embeddings:
            emb = _module_name(model, model.get_input_embeddings())
            extra["trainable_token_indices"] = {emb: list(self.tag_ids)}
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
                extra["trainable_token_indices"][_module_name(model, out)] = list(self.tag_ids)
        lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                          use_dora=cfg.adapter == "dora", task_type="CAUSAL_LM", **extra)
        return fast_trainable_tokens(get_peft_model(model, lora))

    # -- protocol ----------------------------------------------------------
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
            print(f"round {round_index}: {enc.dropped_long} of {enc.pairs} pairs dropped: prompt + chosen longer than --max-length {cfg.max_length}", file=sys.stderr)
        dataset = Dataset.from_list(enc.rows)
        logs: list[dict] = []
        out_dir = self.ctx.output / ".trainer"
        common = dict(
            output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, lr_scheduler_type="constant" if not cfg.warmup_steps else "constant_with_warmup",
            warmup_steps=cfg.warmup_steps, max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.log_every, save_strategy="no",
            report_to=[], seed=cfg.seed + round_index, data_seed=cfg.seed + round_index, use_cpu=self.device == "cpu",
            bf16=str(self.dtype) == "torch.bfloat16", fp16=str(self.dtype) == "torch.float16",
            gradient_checkpointing=cfg.gradient_checkpointing, remove_unused_columns=False,
            disable_tqdm=True, dataloader_num_workers=0, max_length=cfg.max_length, beta=cfg.beta,
        )
        callback = _metrics_callback(self.ctx, self.ctx.global_step, logs, f"{cfg.method} round {round_index + 1}")
        if cfg.is_dpo:
            DPOConfig, _, _ = trl_compat.dpo()
            args = DPOConfig(loss_type=trl_compat.loss_list(cfg.loss), label_smoothing=cfg.label_smoothing, **common)
            collator = MaskingPreferenceCollator(self.tokenizer.pad_token_id, self.rule, cfg.seed + 1000 * round_index)
            cls = dpo_trainer_class()
            trainer = cls(model=self.model, ref_model=self.ref_model, args=args, train_dataset=dataset,
                          processing_class=self.tokenizer, data_collator=collator, callbacks=[callback])
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
        summary = {"round": round_index, "steps": steps, "global_step": self.ctx.global_step, "seconds": round(seconds, 3),
                   "seconds_per_step": round(seconds / steps, 4), "train_loss": float(result.training_loss),
                   **counts, "missing_close": stats.missing_close, "ignored_thinking_tokens": stats.ignored_thinking_tokens}
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
        import shutil

        out = {}
        if self.cfg.adapter == "none":
            tmp = path / ".merged.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            _replace_dir(tmp, path / "merged")
            return {"merged": str(path / "merged")}
        tmp = path / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp)
        self.tokenizer.save_pretrained(tmp)
        _replace_dir(tmp, path / "adapter")
        out["adapter"] = str(path / "adapter")
        if merge:
            import copy

            tmp = path / ".merged.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            merged = copy.deepcopy(self.model).merge_and_unload()
            merged.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            if getattr(merged, "generation_config", None) is not None:
                merged.generation_config.save_pretrained(tmp)
            _replace_dir(tmp, path / "merged")
            out["merged"] = str(path / "merged")
            del merged
        return out

    def student(self):
        return InMemoryStudent(self.model, self.tokenizer, self.template, self.device, name=f"{self.base_path.name} (training)")

    def close(self) -> None:
        self.model = None
        self.ref_model = None
        self.last_trainer = None


def fast_trainable_tokens(model):
    """Make PEFT's trainable-token layers cost O(tags) instead of O(vocab) per forward.

    PEFT (0.21) builds the whole merged matrix (``W.index_copy``) at every
    forward, for the embedding and the tied LM head: on a 262k-row vocabulary
    that made an ORPO step about 10x slower. The same function, computed
    cheaply: the base layer's output, with the rows (embedding) or columns
    (LM head) of the trained tokens replaced by their trained values. Saved
    adapters are unchanged (same parameters, same PEFT format).
    """
    import types

    import torch
    import torch.nn.functional as F

    try:
        from peft.tuners.trainable_tokens.layer import TrainableTokensLayer
    except ImportError:
        return model
    original = TrainableTokensLayer.forward_adapters

    def forward_adapters(self, x, active_adapters, *args, **kwargs):
        if self.disable_adapters or not active_adapters or self.merged:
            return original(self, x, active_adapters, *args, **kwargs)
        self._check_overlapping_tokens(active_adapters)
        result = self.base_layer(x, *args, **kwargs)
        for name in active_adapters:
            deltas = self.trainable_tokens_delta[name]
            index = torch.tensor(self.token_indices[name], device=deltas.device)
            if isinstance(self.base_layer, torch.nn.Embedding):
                hit = x.unsqueeze(-1) == index
                if not bool(hit.any()):
                    continue
                rows = F.embedding(hit.to(torch.long).argmax(-1), deltas.to(result.dtype))
                scale = self._get_embed_scale()
                if scale is not None:
                    rows = rows * scale.to(rows.dtype)
                result = torch.where(hit.any(-1, keepdim=True), rows, result)
            elif isinstance(self.base_layer, torch.nn.Linear):
                cols = F.linear(x, deltas.to(x.dtype))
                if self.base_layer.bias is not None:
                    cols = cols + self.base_layer.bias[index].to(cols.dtype)
                result = result.index_copy(-1, index, cols.to(result.dtype))
            else:
                return original(self, x, active_adapters, *args, **kwargs)
        return result

    for module in model.modules():
        if isinstance(module, TrainableTokensLayer):
            module.forward_adapters = types.MethodType(forward_adapters, module)
    return model


def _module_name(model, module) -> str:
    for name, mod in model.named_modules():
        if mod is module:
            return name.rsplit(".", 1)[-1]
    raise InvalidModelError("cannot find the embedding module by name")


def _replace_dir(tmp: Path, final: Path) -> None:
    """Put a finished directory in place: the old one is removed only after the new one is complete."""
    import shutil

    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# -- the model being trained, as a generation backend (student samples) ----------

def _backend_base():
    from ..backends.base import Detokenizer, LocalBackend

    return Detokenizer, LocalBackend


def InMemoryStudent(model, tokenizer, template, device, name="student"):
    """A ``LocalBackend`` over the live training model (eval mode while it generates)."""
    Detokenizer, LocalBackend = _backend_base()
    import torch

    class _Detok(Detokenizer):
        def __init__(self):
            self.ids: list[int] = []
            self.text = ""

        def push(self, token: int) -> str:
            self.ids.append(token)
            text = tokenizer.decode(self.ids, skip_special_tokens=False)
            if text.endswith("\ufffd"):
                return ""
            delta, self.text = text[len(self.text):], text
            return delta

    class Student(LocalBackend):
        kind = "transformers-live"

        def __init__(self):
            super().__init__(name)
            self.template = template
            cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
            self.context_length = min(getattr(cfg, "max_position_embeddings", 4096) or 4096, 8192)
            self.prefix = bos_prefix(tokenizer)
            eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
            eos = eos if isinstance(eos, list) else [eos]
            self.eos_ids = {int(e) for e in [*eos, tokenizer.eos_token_id] if e is not None}

        def encode(self, prompt: str) -> list[int]:
            ids = tokenizer(prompt, add_special_tokens=False).input_ids
            bos = tokenizer.bos_token
            if self.prefix and not (bos and prompt.startswith(bos)):
                ids = self.prefix + ids
            return ids

        def token_stream(self, ids, sampling, max_new):
            from transformers import DynamicCache

            gen = torch.Generator(device="cpu")
            gen.manual_seed(sampling.seed if sampling.seed is not None else int(time.time_ns() % 2**31))
            was_training = model.training
            model.eval()
            cache = DynamicCache(config=model.config)
            feed = list(ids)
            history = list(ids)
            try:
                with torch.inference_mode():
                    for _ in range(max_new):
                        out = model(input_ids=torch.tensor([feed], device=next(model.parameters()).device), past_key_values=cache, use_cache=True)
                        logits = out.logits[0, -1].float().to("cpu")
                        token = _sample(logits, history, sampling, gen, torch)
                        history.append(token)
                        yield token
                        feed = [token]
            finally:
                if was_training:
                    model.train()

        def is_end(self, token: int) -> bool:
            return token in self.eos_ids

        def detokenizer(self, prompt_ids):
            return _Detok()

    return Student()


def _sample(logits, history, sampling, gen, torch) -> int:
    if sampling.repeat_penalty and sampling.repeat_penalty != 1.0 and history:
        idx = torch.tensor(sorted(set(history[-64:])), dtype=torch.long)
        vals = logits[idx]
        logits[idx] = torch.where(vals > 0, vals / sampling.repeat_penalty, vals * sampling.repeat_penalty)
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_k and sampling.top_k > 0:
        kth = torch.topk(probs, min(sampling.top_k, probs.numel())).values[-1]
        probs = torch.where(probs < kth, torch.zeros_like(probs), probs)
    if sampling.top_p and sampling.top_p < 1.0:
        sp, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sp, 0)
        sp[(cum - sp) > sampling.top_p * cum[-1]] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sp)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=gen))


def open_session(cfg: TrainConfig, ctx: RunContext) -> TRLSession:
    """The ``trl`` engine's runner (see ``engines/__init__.py``)."""
    return TRLSession(cfg, ctx)


def write_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)
