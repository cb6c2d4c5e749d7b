"""The MLX trainer: SFT, ORPO and DPO (sigmoid, exo_pair) with LoRA / DoRA / QLoRA on mlx-lm's layers.

* Model and adapter layers are mlx-lm's own (``mlx_lm.load``,
  ``tuner.utils.linear_to_lora_layers``, ``LoRALinear`` / ``DoRALinear``); a
  quantized MLX base (``mlx_lm.convert -q``) gives QLoRA with no extra code.
  The adapter scale is PEFT's: ``scale = alpha / rank``.
* Tokens, lengths and the training template are the engine-agnostic core's
  (``train.encode``); labels come from ``train.masks`` through
  ``batches.tokenize_pairs``: the TRL engine's ids and masks. A run folder given
  as ``--model`` means its merged model (``train.resolve``), so Phase II starts
  from Phase I as on the TRL engine.
* DPO's reference log-probs are computed once per micro-batch, before the
  gradient pass, by the same model with every adapter module swapped out
  (``adapters_disabled``), so no second model is held in memory.
* Gradient accumulation sums micro-batch gradients, divides by their number,
  clips to ``max_grad_norm`` and takes one AdamW step (weight decay 0, as TRL's
  default). Gradient checkpointing wraps each transformer block with
  ``mx.checkpoint`` (mlx-lm's ``grad_checkpoint``), only while training.
* ``train_embeddings`` trains the rows of the thinking-tag tokens in the
  embedding and output matrices (``TokenRowsEmbedding`` / ``TokenRowsLinear``):
  the way new tags learn their meaning without a full-matrix adapter. Tags that
  are not single tokens of the model are added first (``tokens.add_tokens`` into
  ``<output>/base-with-tags``, the adapter's base from then on) and their rows
  are always trained, as the TRL engine does.
* The learning rate warms up linearly for ``warmup_steps`` and is then constant
  (PRefLexOR's schedule).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ...atomic import atomic_dir, atomic_file, write_json
from ...errors import UsageError
from ...format import ThinkingFormat
from ..config import TrainConfig
from ..data import PreferencePair
from ..encode import training_template
from ..masks import MaskRule
from ..resolve import model_dir, model_name
from ..session import RunContext

MLX_LOSSES = ("sigmoid", "exo_pair")


def _save_safetensors(path: Path, tensors: dict) -> None:
    import mlx.core as mx

    with atomic_file(path) as tmp:
        mx.save_safetensors(str(tmp), tensors)


def _load_model(path: Path):
    """mlx-lm's load with the rotary keys as transformers reads them (transformers 5 nests them where mlx-lm does not look)."""
    from mlx_lm.utils import load

    from ...errors import InvalidModelError
    from ...mlx_config import mlx_overrides

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InvalidModelError(f"{path / 'config.json'} is not readable JSON: {err}", hint="repair or re-convert the model folder") from None
    return load(str(path), model_config=mlx_overrides(config), return_config=True)


def lora_keys(model, target_modules: str) -> list[str] | None:
    """mlx-lm layer keys for ``target_modules`` ("all-linear" = every linear layer of the blocks, PEFT's meaning)."""
    import mlx.nn as nn

    if target_modules.strip() in ("", "all-linear", "all"):
        return None
    wanted = {t.strip() for t in target_modules.split(",") if t.strip()}
    keys, names = [], set()
    for path, m in model.layers[0].named_modules():
        if isinstance(m, (nn.Linear, nn.QuantizedLinear)):
            names.add(path.rsplit(".", 1)[-1])
            if path.rsplit(".", 1)[-1] in wanted:
                keys.append(path)
    missing = wanted - names
    if missing:
        raise UsageError(
            f"--target-modules names {', '.join(sorted(missing))}, which this model's blocks do not have",
            hint=f"choose among: {', '.join(sorted(names))} (or all-linear)",
        )
    return keys


class MLXTrainer:
    """One training run on MLX; also the ``TrainSession`` of ``train --engine mlx``."""

    def __init__(self, config: TrainConfig, ctx: RunContext | None = None, adapter_init: str | Path | None = None):
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim
        from mlx_lm.tuner.utils import linear_to_lora_layers

        from ...backends._mlx_adapters import add_token_rows

        c = config.resolved()
        if c.adapter == "none":
            raise UsageError(
                "the MLX engine trains adapters only (lora or dora; QLoRA = lora on a quantized MLX model)",
                hint="use --adapter lora|dora, or --engine trl for a full fine-tune",
            )
        if c.is_dpo and c.loss not in MLX_LOSSES:
            raise UsageError(
                f"the MLX engine implements the DPO losses {', '.join(MLX_LOSSES)}, not {c.loss!r}",
                hint="use --loss exo_pair or --loss sigmoid, or --engine trl",
            )
        self.c, self.ctx = c, ctx or RunContext(output=Path(c.output))
        self.mx, self.nn = mx, nn
        path = model_dir(c.model)  # a run folder means its merged model, as for the TRL engine
        self.base_path = path.resolve()
        mx.random.seed(c.seed)
        self.model, self.tokenizer, self.model_config = _load_model(self.base_path)
        self.tok = self.tokenizer._tokenizer
        self.fmt = ThinkingFormat.preset(c.tags)
        self.added_tags: list[str] = []
        split = [t for t in self.fmt.tags if len(self.tok.encode(t, add_special_tokens=False)) != 1]
        if split:  # as the TRL engine does: add the tags as tokens, then train their rows
            from .tokens import add_tokens

            with_tags = Path(c.output).expanduser() / "base-with-tags"
            if not (with_tags / "config.json").is_file():
                if not self.ctx.quiet:
                    print(f"adding {', '.join(split)} as special tokens: {with_tags}", file=sys.stderr)
                add_tokens(self.base_path, with_tags, self.fmt.tags, force=True)
            self.base_path = with_tags.resolve()
            self.model, self.tokenizer, self.model_config = _load_model(self.base_path)
            self.tok = self.tokenizer._tokenizer
            self.added_tags = split
        self.model.freeze()
        self.lora_parameters = {"rank": c.rank, "scale": c.alpha / c.rank, "dropout": c.dropout, "keys": lora_keys(self.model, c.target_modules)}
        self.num_layers = len(self.model.layers)
        linear_to_lora_layers(self.model, self.num_layers, self.lora_parameters, use_dora=c.adapter == "dora")
        self.row_ids: list[int] = []
        if c.train_embeddings or self.added_tags:
            for tag in self.fmt.tags:
                pieces = self.tok.encode(tag, add_special_tokens=False)
                if len(pieces) == 1:
                    self.row_ids.append(pieces[0])
            if not self.row_ids:
                raise UsageError(
                    f"--train-embeddings: none of the tags {self.fmt.tags} is a single token of this tokenizer",
                    hint="add them first (preflexor_local.train.mlx.add_tokens on the MLX model, or `convert add-tokens` on the HF model before `convert mlx`), or pass --freeze-embeddings",
                )
            add_token_rows(self.model, self.row_ids)
        close = self.tok.encode(self.fmt.think_end, add_special_tokens=False)
        self.rule = MaskRule(
            mask_thinking=c.mask_thinking,
            close_ids=tuple(close),
            keep_close_tag=c.keep_close_tag,
            on_missing_close=c.on_missing_close,
            partial_p=c.partial_mask_p if c.mask_thinking else 1.0,
        )
        self.template = training_template(c, self.tok, self.model_config.get("model_type"), model_name(path))
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else (self.tok.eos_token_id or 0)
        self.global_step = 0
        self.epoch = 0
        warm = max(c.warmup_steps, 0)
        lr = optim.join_schedules([optim.linear_schedule(0.0, c.lr, warm), lambda _: c.lr], [warm]) if warm else c.lr
        self.optimizer = optim.AdamW(learning_rate=lr, weight_decay=0.0)
        self._orig_call = None
        if adapter_init is not None:
            self.load_adapter_weights(Path(adapter_init))
        if self.ctx.resume_from is not None:
            self._resume(Path(self.ctx.resume_from))

    # -- parameters ---------------------------------------------------------------
    def trainable(self) -> dict:
        from mlx.utils import tree_flatten

        return dict(tree_flatten(self.model.trainable_parameters()))

    def load_adapter_weights(self, path: Path) -> None:
        import mlx.core as mx

        from ...backends._mlx_adapters import ADAPTER_FILE, ROWS_FILE

        weights = dict(mx.load(str(path / ADAPTER_FILE)))
        if (path / ROWS_FILE).is_file():
            weights.update(mx.load(str(path / ROWS_FILE)))
        known = self.trainable()
        bad = [k for k, v in weights.items() if k not in known or known[k].shape != v.shape]
        if bad:
            raise UsageError(
                f"adapter {path} does not fit this model/adapter shape ({', '.join(bad[:3])}…)",
                hint="use the same --adapter, --rank and --target-modules as the run that wrote it",
            )
        self.model.load_weights(list(weights.items()), strict=False)

    # -- the objective ------------------------------------------------------------
    def _loss(self, model, ids, labels, lengths, ref, weights=None):
        from . import losses

        c = self.c
        if c.method == "sft":
            return losses.sft_loss(model, ids, labels, lengths, weights)
        if c.method == "orpo":
            return losses.orpo_loss(model, ids, labels, lengths, c.beta, weights)
        return losses.dpo_loss(model, ids, labels, lengths, ref, c.beta, c.loss, c.label_smoothing)

    def reference_logps(self, ids, labels):
        """Summed log-probs of the base model (every adapter off): DPO's reference, once per batch."""
        from ...backends._mlx_adapters import adapters_disabled
        from .losses import sequence_logps

        with adapters_disabled(self.model):
            ref, _ = sequence_logps(self.model, ids, labels)
            ref = self.mx.stop_gradient(ref)
            self.mx.eval(ref)
        return ref

    def batch_loss(self, batch, weights=None) -> tuple[float, dict]:
        """Loss and metrics of one padded batch (ids, labels, lengths) without a gradient step."""
        ids, labels, lengths = batch
        ref = self.reference_logps(ids, labels) if self.c.is_dpo else None
        loss, metrics = self._loss(self.model, ids, labels, lengths, ref, weights)
        self.mx.eval(loss, metrics)
        return loss.item(), {k: v.item() for k, v in metrics.items()}

    def _checkpointing(self, on: bool) -> None:
        from mlx_lm.tuner.trainer import grad_checkpoint

        cls = type(self.model.layers[0])
        if on and self._orig_call is None and self.c.gradient_checkpointing:
            self._orig_call = cls.__call__
            grad_checkpoint(self.model.layers[0])
        elif not on and self._orig_call is not None:
            cls.__call__ = self._orig_call
            self._orig_call = None

    # -- TrainSession ------------------------------------------------------------------
    def tokenize(self, pairs: list[PreferencePair]):
        from .batches import tokenize_pairs

        return tokenize_pairs(pairs, self.tok, self.template, self.rule, self.c.max_length, self.c.seed, self.epoch, sft=self.c.method == "sft")

    def train_round(self, pairs: list[PreferencePair], steps: int, round_index: int = 0) -> dict:
        import mlx.core as mx
        import mlx.nn as nn
        import mlx.optimizers as optim
        from mlx.utils import tree_map

        from .batches import end_weights, pad_batch

        c = self.c
        data = self.tokenize(pairs)
        if not data.examples:
            raise UsageError(f"no pair fits --max-length {c.max_length} ({data.dropped_long} dropped as too long)", hint="raise --max-length")
        value_and_grad = nn.value_and_grad(self.model, self._loss)
        preference = c.method != "sft"
        self.model.train()
        self._checkpointing(True)
        bar = None
        if not self.ctx.quiet:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc=f"mlx {c.method} round {round_index + 1}", unit="step", file=sys.stderr)
        stream = self._micro_batches(pairs, data.examples)
        t_round = time.perf_counter()
        losses, last = [], {}
        try:
            for _ in range(steps):
                t0 = time.perf_counter()
                acc, step_loss, agg = None, 0.0, {}
                for _ in range(c.grad_accum):
                    micro = next(stream)
                    ids, labels, lengths = pad_batch(micro, self.pad_id, preference)
                    ref = self.reference_logps(ids, labels) if c.is_dpo else None
                    weights = end_weights(micro, ids.shape[1], c.end_weight)
                    (loss, metrics), grads = value_and_grad(self.model, ids, labels, lengths, ref, weights)
                    acc = grads if acc is None else tree_map(lambda a, b: a + b, acc, grads)
                    mx.eval(acc, loss, metrics)
                    step_loss += loss.item() / c.grad_accum
                    for k, v in metrics.items():
                        agg[k] = agg.get(k, 0.0) + v.item() / c.grad_accum
                acc = tree_map(lambda g: g / c.grad_accum, acc)
                acc, norm = optim.clip_grad_norm(acc, c.max_grad_norm)
                self.optimizer.update(self.model, acc)
                mx.eval(self.model.trainable_parameters(), self.optimizer.state)
                self.global_step += 1
                self.ctx.global_step = self.global_step
                losses.append(step_loss)
                last = {
                    "step": self.global_step,
                    "round": round_index,
                    "loss": step_loss,
                    "grad_norm": norm.item(),
                    "lr": float(self.optimizer.learning_rate.item()),
                    "seconds": time.perf_counter() - t0,
                    **agg,
                }
                if self.global_step % c.log_every == 0:
                    self.ctx.log(last)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{step_loss:.4f}")
        finally:
            if bar is not None:
                bar.close()
            self._checkpointing(False)
            self.model.eval()
        seconds = time.perf_counter() - t_round
        summary = {
            "round": round_index,
            "steps": steps,
            "global_step": self.global_step,
            "seconds": round(seconds, 3),
            "seconds_per_step": round(seconds / steps, 4),
            "train_loss": sum(losses) / len(losses),
            "first_loss": losses[0],
            "last_loss": losses[-1],
            "pairs_used": len(data.examples),
            "dropped_long": data.dropped_long,
            "truncated_rejected": data.truncated_rejected,
            "missing_close": data.stats.missing_close,
            "ignored_thinking_tokens": data.stats.ignored_thinking_tokens,
        }
        for key in ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"):
            if key in last:
                summary[key] = last[key]
        return summary

    def _micro_batches(self, pairs, examples):
        """Batches forever, reshuffled each epoch; a partial thinking mask is re-drawn each epoch too."""
        from .batches import batches

        while True:
            yield from batches(examples, self.c.batch_size, self.c.seed, self.epoch)
            self.epoch += 1
            if self.c.partial_mask_p < 1.0 and self.c.mask_thinking:
                examples = self.tokenize(pairs).examples

    # -- saving ----------------------------------------------------------------------
    def adapter_config(self) -> dict:
        c = self.c
        return {
            "model": str(self.base_path),
            "fine_tune_type": c.adapter,
            "num_layers": self.num_layers,
            "lora_parameters": self.lora_parameters,
            "preflexor": {
                "engine": "mlx",
                "method": c.method,
                "loss": c.loss,
                "beta": c.beta,
                "tags": list(self.fmt.tags),
                "alpha": c.alpha,
                "rank": c.rank,
                "target_modules": c.target_modules,
                "chat_template": self.template.source if self.template.name != "model" else None,
                "chat_template_name": self.template.name,
                "token_rows": {"ids": self.row_ids} if self.row_ids else None,
                "global_step": self.global_step,
            },
        }

    def save_adapter(self, path: str | Path) -> Path:
        """Write the adapter directory (mlx-lm format + our token rows), each file atomically."""
        from ...backends._mlx_adapters import ADAPTER_FILE, CONFIG_FILE, ROWS_FILE, adapter_weights

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        lora, rows = adapter_weights(self.model)
        _save_safetensors(path / ADAPTER_FILE, lora)
        if rows:
            _save_safetensors(path / ROWS_FILE, rows)
        write_json(path / CONFIG_FILE, self.adapter_config())
        return path

    def save_checkpoint(self, path: Path) -> None:
        from mlx.utils import tree_flatten

        self.save_adapter(path)
        state = dict(tree_flatten(self.optimizer.state))
        _save_safetensors(Path(path) / "optimizer.safetensors", {k: v for k, v in state.items() if hasattr(v, "shape")})
        write_json(Path(path) / "trainer_state.json", {"global_step": self.global_step, "epoch": self.epoch})

    def _resume(self, path: Path) -> None:
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        self.load_adapter_weights(path)
        state = json.loads((path / "trainer_state.json").read_text())
        self.global_step, self.epoch = int(state["global_step"]), int(state["epoch"])
        opt_file = path / "optimizer.safetensors"
        if opt_file.is_file():
            self.optimizer.init(self.model.trainable_parameters())
            self.optimizer.state = tree_unflatten(list(mx.load(str(opt_file)).items()))

    def save_final(self, path: Path, merge: bool = True) -> dict:
        """``path/adapter`` (MLX adapter dir) and, with ``merge``, ``path/merged``: the fused MLX model (mlx-lm's ``fuse``)."""
        path = Path(path)
        with atomic_dir(path / "adapter") as tmp:
            self.save_adapter(tmp)
            if self.template.name != "model":
                (tmp / "chat_template.jinja").write_text(self.template.source, encoding="utf-8")
        out = {"adapter": str(path / "adapter")}
        if merge:
            from .fuse import fuse_adapter

            fuse_adapter(self.base_path, path / "adapter", path / "merged", force=True, quiet=self.ctx.quiet)
            out["merged"] = str(path / "merged")
        return out

    def student(self):
        from ...backends.mlx import MLXBackend
        from ...config import LoadOptions

        self.model.eval()
        return MLXBackend.from_loaded(
            self.model,
            self.tokenizer,
            self.model_config,
            self.base_path,
            LoadOptions(chat_template=self.c.chat_template),
            name=f"{self.base_path.name} (training)",
            template=self.template,
        )

    def close(self) -> None:
        self._checkpointing(False)
        self.model = None
