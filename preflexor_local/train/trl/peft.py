"""PEFT around the model the TRL engine trains: LoRA/DoRA on the chosen layers, the thinking-tag rows trainable.

* ``wrap_model``: a LoRA/DoRA adapter (``target_modules``: a comma list or
  ``all-linear``); with ``train_embeddings``, the tag ids' rows of the
  embedding (and of an untied output layer) are trained through PEFT
  ``trainable_token_indices`` (only those rows; tied embeddings stay tied).
  ``adapter = "none"`` is a full fine-tune. ``resume`` continues from a round
  checkpoint (adapter or full weights).
* ``fast_trainable_tokens``: the same trainable-token function, O(tags) per
  forward instead of O(vocab).
"""

from __future__ import annotations

from pathlib import Path

from ...errors import InvalidModelError
from ..config import TrainConfig


def wrap_model(model, cfg: TrainConfig, tag_ids: list[int], resume: Path | None, dtype):
    """``model`` with the run's adapter (new, or the one in ``resume``); the model itself for a full fine-tune."""
    if cfg.adapter == "none":
        if resume is not None:
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(resume, local_files_only=True, dtype=dtype)
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    if resume is not None:
        return fast_trainable_tokens(PeftModel.from_pretrained(model, resume, is_trainable=True))
    targets = lora_targets(cfg.target_modules)
    extra = {}
    if cfg.train_embeddings:
        emb = _module_name(model, model.get_input_embeddings())
        extra["trainable_token_indices"] = {emb: list(tag_ids)}
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr():
            extra["trainable_token_indices"][_module_name(model, out)] = list(tag_ids)
    lora = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, use_dora=cfg.adapter == "dora", task_type="CAUSAL_LM", **extra
    )
    return fast_trainable_tokens(get_peft_model(model, lora))


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


def lora_targets(spec: str):
    """``--target-modules`` as PEFT takes it: "all-linear", "re:<regex over full module names>" (e.g. only the
    top blocks, so that backward stops below them), or a comma list of module-name suffixes."""
    if spec == "all-linear":
        return spec
    if spec.startswith("re:"):
        return spec[3:]  # PEFT treats a plain string as a full-match regex
    return [t.strip() for t in spec.split(",") if t.strip()]
