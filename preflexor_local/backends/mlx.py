"""MLX backend (mlx-lm) for MLX model directories: Metal on Apple silicon, CPU elsewhere.

What it serves:

* an MLX checkpoint directory (``mlx_lm.convert`` output: safetensors metadata
  ``format: mlx`` or a ``quantization`` block in ``config.json``), also when it
  is a hub id already in the local cache;
* an MLX adapter directory (``adapter_config.json`` + ``adapters.safetensors``,
  as written by ``mlx_lm.lora`` or ``train --engine mlx``): the base model named
  in its config is loaded and the adapter applied at load;
* a plain Hugging Face directory (safetensors) on Apple silicon, where MLX is
  the fast path, or where torch is not installed (the transformers backend
  cannot serve it); elsewhere such a directory goes to transformers.

The prompt is rendered by ``render_prompt`` (the model's own template, else the
shared choice), so a pre-filled thinking section reaches the model exactly as
written. The KV cache of the previous call is kept: a new prompt that shares a
prefix with the last one (the next recursive round, the answer after its
thinking) only evaluates the tokens after the shared part.
"""

from __future__ import annotations

import json
import platform
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..config import LoadOptions, Sampling
from ..errors import InvalidModelError, ModelNotFoundError
from ..mlx_config import mlx_overrides
from ..models import ModelSpec
from ..prompt import hf_has_token, probe_template
from . import BackendEntry
from .base import Backend, Detokenizer, LocalBackend, TextDetokenizer, context_window, needs_prefix, reusable_prefix
from .dry import dry_for

REPEAT_WINDOW = 64  # tokens the repeat penalty looks back over (llama.cpp's default)


def _safetensors_metadata(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100_000_000:
                return {}
            return json.loads(fh.read(n)).get("__metadata__") or {}
    except (OSError, ValueError, struct.error):
        return {}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def is_mlx_dir(path: Path) -> bool:
    """Whether ``path`` holds an MLX-format checkpoint (not merely an HF one mlx-lm could read)."""
    config = _read_json(path / "config.json")
    if not config:
        return False
    if isinstance(config.get("quantization"), dict):
        return True
    shards = sorted(path.glob("model*.safetensors"))
    return bool(shards) and _safetensors_metadata(shards[0]).get("format") == "mlx"


def is_mlx_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and (path / "adapters.safetensors").is_file()


def _apple_silicon() -> bool:
    return platform.system() == "Darwin" and platform.machine() == "arm64"


def _claims(spec: ModelSpec) -> int:
    if spec.kind != "dir" or spec.path is None:
        return 0
    path = spec.path
    if is_mlx_adapter_dir(path):
        return 20
    if is_mlx_dir(path):
        return 20  # above the transformers backend, which reads HF directories
    if (path / "config.json").is_file() and any(path.glob("*.safetensors")):
        import importlib.util

        if _apple_silicon() or importlib.util.find_spec("torch") is None:
            return 15  # above transformers (10): Metal through MLX beats torch MPS; and without torch, MLX is the only way
        return 1
    return 0


ENTRY = BackendEntry(
    name="mlx",
    summary="MLX model directories through mlx-lm (Metal on Apple silicon, CPU elsewhere)",
    claims=_claims,
    loader="preflexor_local.backends.mlx:load",
    requires=("mlx", "mlx_lm"),
    extra="mlx",
)


class MLXBackend(LocalBackend):
    kind = "mlx"

    def __init__(self, path: Path, options: LoadOptions, name: str | None = None, adapter: Path | None = None):
        from mlx_lm.utils import load as mlx_load

        self.path = Path(path)
        self.adapter = adapter
        if not (self.path / "config.json").is_file():
            raise InvalidModelError(
                f"{self.path} has no config.json, so it is not an MLX or Hugging Face model directory",
                hint="convert a Hugging Face checkpoint with `preflexor-local convert mlx` (or mlx_lm.convert)",
            )
        try:
            # the rotary keys as transformers reads them (an HF folder saved by transformers 5, or a plain mlx_lm.convert copy of one)
            overrides = mlx_overrides(_read_json(self.path / "config.json"))
            model, tokenizer, config = mlx_load(str(self.path), model_config=overrides, return_config=True)
            if adapter is not None:
                from ._mlx_adapters import apply_adapter

                apply_adapter(model, adapter)
        except FileNotFoundError as err:
            raise InvalidModelError(f"mlx-lm could not load {self.path}: {err}", hint="the directory needs config.json and model*.safetensors") from None
        except ValueError as err:
            raise InvalidModelError(
                f"mlx-lm could not load {self.path} (model_type {_read_json(self.path / 'config.json').get('model_type')!r}): {err}",
                hint="the architecture may be newer than this mlx-lm; upgrade mlx-lm, or use the transformers backend",
            ) from None
        super().__init__(name or (f"{self.path.name}+{adapter.name}" if adapter else self.path.name))
        template_source = None
        if adapter is not None:
            from ._mlx_adapters import read_adapter_config

            template_source = (read_adapter_config(adapter).get("preflexor") or {}).get("chat_template")
        self._setup(model, tokenizer, config, options, name, template_source=template_source)

    @classmethod
    def from_loaded(cls, model, tokenizer, config: dict, path: Path, options: LoadOptions, name: str | None = None, template=None) -> MLXBackend:
        """A backend around a model already in memory (the trainer's student); weights are shared, not copied."""
        self = cls.__new__(cls)
        Backend.__init__(self, name or Path(path).name)
        self.path, self.adapter = Path(path), None
        self._setup(model, tokenizer, config, options, name, template=template)
        return self

    def _setup(self, model, tokenizer, config: dict, options: LoadOptions, name: str | None, template=None, template_source: str | None = None) -> None:
        import mlx.core as mx

        self.mx = mx
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.hf_tok = tokenizer._tokenizer
        trained = config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings")
        self.context_length = context_window(trained, options.ctx)
        self.eos_ids = set(tokenizer.eos_token_ids)
        gen_cfg = _read_json(self.path / "generation_config.json").get("eos_token_id")
        self.eos_ids |= set(gen_cfg if isinstance(gen_cfg, list) else [gen_cfg] if isinstance(gen_cfg, int) else [])
        tok = self.hf_tok
        self.bos_token = tok.bos_token or ""
        probe = tok.encode("a", add_special_tokens=True)
        self.add_bos = tok.bos_token_id is not None and bool(probe) and probe[0] == tok.bos_token_id
        if template is not None and options.chat_template in (None, "auto"):
            self.template = template
        else:
            self.template = probe_template(
                options.chat_template,
                template_source or getattr(tok, "chat_template", None),
                config.get("model_type"),
                names=(self.path.name, name),
                has_token=hf_has_token(tok),
                bos_token=self.bos_token,
                eos_token=tok.eos_token or "",
            )
        self._cache = None
        self._held: list[int] = []  # the tokens whose keys/values the cache holds

    # -- LocalBackend ---------------------------------------------------------------
    def encode(self, prompt: str) -> list[int]:
        ids = self.hf_tok.encode(prompt, add_special_tokens=False)
        if needs_prefix(prompt, self.bos_token, self.add_bos):
            ids = [self.hf_tok.bos_token_id, *ids]
        return ids

    def cached_prefix(self, ids: list[int]) -> int:
        return reusable_prefix(self._held, ids)

    def _prepare_cache(self, ids: list[int]) -> int:
        from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache

        keep = self.cached_prefix(ids) if self._cache is not None else 0
        if keep > 0 and can_trim_prompt_cache(self._cache):
            drop = len(self._held) - keep
            if drop > 0 and trim_prompt_cache(self._cache, drop) != drop:
                keep = 0
        else:
            keep = 0
        if keep == 0:
            self._cache = make_prompt_cache(self.model)
        self._held = list(ids[:keep])
        return keep

    def token_stream(self, ids: list[int], sampling: Sampling, max_new: int, dry_source: Sequence[int] = ()) -> Iterator[int]:
        from mlx_lm.generate import generate_step
        from mlx_lm.sample_utils import make_logits_processors, make_sampler

        mx = self.mx
        if sampling.seed is not None:
            mx.random.seed(sampling.seed)
        greedy = sampling.temperature <= 0
        sampler = (
            make_sampler(0.0)
            if greedy
            else make_sampler(
                sampling.temperature,
                top_p=sampling.top_p,
                min_p=sampling.min_p,
                top_k=sampling.top_k,
            )
        )
        processors = []
        if sampling.repeat_penalty and sampling.repeat_penalty != 1.0:
            processors = make_logits_processors(repetition_penalty=sampling.repeat_penalty, repetition_context_size=REPEAT_WINDOW)
        keep = self._prepare_cache(ids)
        dry = dry_for(sampling, self._piece, len(dry_source) + max_new)
        if dry:
            fed_prompt = len(ids) - keep  # generate_step hands processors the tokens it was fed, then its own

            def dry_processor(tokens, logits):
                penalty = dry([*dry_source, *tokens[fed_prompt:].tolist()])
                if not penalty:
                    return logits
                return logits.at[:, mx.array(list(penalty))].subtract(mx.array(list(penalty.values()), dtype=logits.dtype))

            processors.append(dry_processor)
        fed = list(ids)
        steps = generate_step(
            mx.array(ids[keep:]),
            self.model,
            max_tokens=max_new,
            sampler=sampler,
            logits_processors=processors or None,
            prompt_cache=self._cache,
        )
        try:
            for token, _ in steps:
                fed.append(int(token))
                yield int(token)
        finally:
            steps.close()
            offset = getattr(self._cache[0], "offset", None) if self._cache else None
            # generate_step feeds each token before yielding it, so the cache may be one ahead of what we used.
            self._held = fed[:offset] if isinstance(offset, int) and offset <= len(fed) else []
            if not self._held:
                self._cache = None

    def is_end(self, token: int) -> bool:
        return token in self.eos_ids

    def _piece(self, token: int) -> str:
        return self.hf_tok.decode([token])

    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer:
        return TextDetokenizer(self.hf_tok, prompt_ids)

    def describe(self) -> dict:
        out = {**super().describe(), "path": str(self.path), "architecture": self.config.get("model_type")}
        if self.adapter:
            out["adapter"] = str(self.adapter)
        if q := self.config.get("quantization"):
            out["quantization"] = f"{q.get('bits')}-bit {q.get('mode', 'affine')}"
        return out

    def close(self) -> None:
        self._cache = None
        self._held = []
        self.model = None


def resolve_adapter(path: Path) -> tuple[Path, Path]:
    """(base model dir, adapter dir) for an MLX adapter directory, or a clear error."""
    config = _read_json(path / "adapter_config.json")
    base = config.get("model") or config.get("base_model")
    if not base:
        raise InvalidModelError(
            f"the adapter {path} does not say which base model it belongs to (no 'model' in adapter_config.json)",
            hint='add "model": "/path/to/base-mlx" to its adapter_config.json',
        )
    base_path = Path(base).expanduser()
    if not base_path.is_absolute() and not base_path.exists():
        base_path = (path / base_path).resolve()
    if not base_path.is_dir():
        from ..models import parse_spec

        try:
            spec = parse_spec(str(base))
        except ModelNotFoundError:
            spec = None
        if spec is None or spec.kind != "dir":
            raise ModelNotFoundError(
                f"the base model of adapter {path} ({base}) is not available locally",
                hint="edit 'model' in its adapter_config.json to point at the local MLX base directory",
            )
        base_path = spec.path
    return base_path, path


def load(spec: ModelSpec, options: LoadOptions) -> MLXBackend:
    if spec.kind != "dir" or spec.path is None:
        raise InvalidModelError(
            f"{spec.text} is not a directory; the MLX backend loads MLX model or adapter directories",
            hint="pass the directory written by `preflexor-local convert mlx` or mlx_lm.convert",
        )
    if is_mlx_adapter_dir(spec.path):
        base, adapter = resolve_adapter(spec.path)
        return MLXBackend(base, options, adapter=adapter, name=spec.name)
    return MLXBackend(spec.path, options, name=spec.name)
