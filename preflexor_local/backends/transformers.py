"""transformers/torch backend for Hugging Face checkpoint directories (CUDA, then MPS, then CPU).

Hub ids resolve only from the local cache (``local_files_only``): nothing is
downloaded. Generation is a plain KV-cached decode loop rather than
``model.generate`` so the shared loop in ``LocalBackend`` controls stop strings
and streaming exactly as for llama.cpp, and so the cache of the previous call is
cropped to the shared prefix and reused instead of re-encoding it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..config import LoadOptions, Sampling
from ..devices import pick_device, pick_dtype
from ..errors import InvalidModelError
from ..models import ModelSpec
from ..prompt import ChatTemplate, hf_has_token, probe_template
from . import BackendEntry
from .base import Detokenizer, LocalBackend, TextDetokenizer, context_window, needs_prefix, reusable_prefix
from .dry import dry_for


def _claims(spec: ModelSpec) -> int:
    return 10 if spec.kind == "dir" and (spec.path / "config.json").is_file() else 0


ENTRY = BackendEntry(
    name="transformers",
    summary="Hugging Face checkpoint directories through transformers (CUDA, MPS, CPU)",
    claims=_claims,
    loader="preflexor_local.backends.transformers:load",
    requires=("torch", "transformers"),
    extra="hf",
)


def sample_next(logits, history, sampling: Sampling, generator, dry: dict[int, float] | None = None):
    """One token from ``logits`` (1-D) with repetition penalty, DRY penalties (``{token: amount}``), temperature, top-k, top-p, min-p."""
    import torch

    logits = logits.float()
    if sampling.repeat_penalty != 1.0 and history:
        idx = torch.tensor(sorted(set(history)), device=logits.device)
        picked = logits[idx]
        logits[idx] = torch.where(picked > 0, picked / sampling.repeat_penalty, picked * sampling.repeat_penalty)
    if dry:
        logits[torch.tensor(list(dry), device=logits.device)] -= torch.tensor(list(dry.values()), dtype=logits.dtype, device=logits.device)
    if sampling.temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / sampling.temperature
    if sampling.top_k and sampling.top_k > 0:
        kth = torch.topk(logits, min(sampling.top_k, logits.numel())).values[-1]
        logits[logits < kth] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    if sampling.min_p > 0:
        probs[probs < sampling.min_p * probs.max()] = 0
    if 0 < sampling.top_p < 1:
        sorted_p, order = torch.sort(probs, descending=True)
        drop = torch.cumsum(sorted_p, dim=-1) - sorted_p > sampling.top_p
        sorted_p[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


class TransformersBackend(LocalBackend):
    kind = "transformers"

    def __init__(self, path: Path, options: LoadOptions, name: str | None = None):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # the CLI shows its own progress; keep stderr for thinking
        hf_logging.set_verbosity_error()
        super().__init__(name or path.name)
        self.path = path
        model_type = json.loads((path / "config.json").read_text()).get("model_type")
        try:
            AutoConfig.from_pretrained(path, local_files_only=True)  # an unknown architecture fails here, by name
        except (ValueError, KeyError):
            raise InvalidModelError(
                f"unknown architecture {model_type!r} in {path / 'config.json'}: this transformers does not support it",
                hint="upgrade transformers, or use a GGUF of the model with the llama.cpp backend",
            ) from None
        self.device = pick_device(options.device)
        self.dtype = pick_dtype(options.dtype, self.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=self.dtype).to(self.device).eval()
        except (OSError, ValueError) as err:
            raise InvalidModelError(f"cannot load the checkpoint in {path}: {str(err).splitlines()[0]}") from None
        self._setup(model, tokenizer, options)
        tok = self.tokenizer
        self.template = probe_template(
            options.chat_template,
            tok.chat_template,
            model_type,
            names=(path.name, name),
            has_token=hf_has_token(tok),
            bos_token=tok.bos_token or "",
            eos_token=tok.eos_token or "",
        )

    @classmethod
    def from_loaded(
        cls, model, tokenizer, template: ChatTemplate, path: Path, options: LoadOptions | None = None, name: str | None = None
    ) -> TransformersBackend:
        """A backend around a model already in memory (the trainer's student); weights are shared, not copied.

        The model generates in whatever mode it is in: the caller puts it in eval mode (a trainer switches it
        back to training mode itself). ``template`` is the one it is trained with.
        """
        self = cls.__new__(cls)
        LocalBackend.__init__(self, name or Path(path).name)
        param = next(model.parameters())
        self.path, self.device, self.dtype = Path(path), str(param.device), param.dtype
        self._setup(model, tokenizer, options or LoadOptions())
        self.template = template
        return self

    def _setup(self, model, tokenizer, options: LoadOptions) -> None:
        import torch

        self.model, self.tokenizer = model, tokenizer
        tok = tokenizer
        self.context_length = context_window(getattr(model.config.get_text_config(), "max_position_embeddings", None), options.ctx)
        with_special = tok("a").input_ids
        without = tok("a", add_special_tokens=False).input_ids
        self._prefix_ids = with_special[: with_special.index(without[0])] if without and without[0] in with_special else []
        eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in [*eos, tok.eos_token_id] if e is not None}
        self._cache = None
        self._cache_ids: list[int] = []
        self._torch = torch

    def encode(self, prompt: str) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False).input_ids
        if needs_prefix(prompt, self.tokenizer.bos_token or "", bool(self._prefix_ids)):
            ids = self._prefix_ids + ids
        return ids

    def cached_prefix(self, ids: list[int]) -> int:
        return reusable_prefix(self._cache_ids, ids)

    def token_stream(self, ids: list[int], sampling: Sampling, max_new: int, dry_source: Sequence[int] = ()) -> Iterator[int]:
        torch = self._torch
        from transformers import DynamicCache

        reuse = self.cached_prefix(ids)
        if self._cache is not None and reuse > 0 and self._cache.is_croppable:
            extra = self._cache.get_seq_length() - reuse
            if extra > 0:
                self._cache.crop(-extra)  # transformers 5: a negative count removes that many tokens
        else:
            self._cache, reuse = DynamicCache(config=self.model.config), 0
        self._cache_ids = list(ids[:reuse])
        generator = torch.Generator(device="cpu")
        if sampling.seed is not None:
            generator.manual_seed(sampling.seed)
        else:
            generator.seed()
        history = list(ids)
        feed = ids[reuse:]
        dry = dry_for(sampling, self._piece, len(dry_source) + max_new)
        with torch.inference_mode():
            for _ in range(max_new):
                out = self.model(input_ids=torch.tensor([feed], device=self.device), past_key_values=self._cache, use_cache=True)
                self._cache_ids.extend(feed)
                penalty = dry([*dry_source, *history[len(ids) :]]) if dry else None
                token = sample_next(out.logits[0, -1].to("cpu"), history, sampling, generator, penalty)
                history.append(token)
                yield token
                feed = [token]

    def is_end(self, token: int) -> bool:
        return token in self.eos_ids

    def _piece(self, token: int) -> str:
        return self.tokenizer.decode([token])

    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer:
        return TextDetokenizer(self.tokenizer, prompt_ids)

    def describe(self) -> dict:
        return {**super().describe(), "path": str(self.path), "device": self.device, "dtype": str(self.dtype).removeprefix("torch.")}

    def close(self) -> None:
        self.model = None
        self._cache = None


def load(spec: ModelSpec, options: LoadOptions) -> TransformersBackend:
    return TransformersBackend(spec.path, options, name=spec.name)
