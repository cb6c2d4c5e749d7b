"""The resolver: which backend serves a model spec.

Every module in this package that defines ``ENTRY`` registers a backend, and so
does any installed package that declares an entry point in the group
``preflexor_local.backends``. A new engine (MLX, say) is a new module here; the
resolver, the engine and the CLI need no edits. Backend modules import their
engine lazily, so discovering them is cheap.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from ..config import LoadOptions
from ..errors import InvalidModelError, UsageError
from ..extras import installed, require
from ..models import ModelSpec, parse_spec
from .base import Backend, Generation, GenerationRequest, LocalBackend

__all__ = ["Backend", "BackendEntry", "Generation", "GenerationRequest", "LocalBackend", "entries", "load", "resolve"]


@dataclass(frozen=True)
class BackendEntry:
    name: str
    summary: str
    claims: Callable[[ModelSpec], int]  # 0: not mine; the highest score wins
    loader: str  # "module:function" taking (spec, LoadOptions) and returning a Backend
    requires: tuple[str, ...] = ()  # importable modules the engine needs
    extra: str = ""  # the pip extra that installs them

    @property
    def available(self) -> bool:
        return installed(self.requires)

    def check(self) -> None:
        require(f"the {self.name} backend", self.requires, self.extra)


@lru_cache(maxsize=1)
def entries() -> tuple[BackendEntry, ...]:
    found: list[BackendEntry] = []
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("_") or mod.name == "base":
            continue
        entry = getattr(importlib.import_module(f"{__name__}.{mod.name}"), "ENTRY", None)
        if isinstance(entry, BackendEntry):
            found.append(entry)
    from importlib.metadata import entry_points

    for ep in entry_points(group="preflexor_local.backends"):
        entry = ep.load()
        if isinstance(entry, BackendEntry):
            found.append(entry)
    return tuple(sorted(found, key=lambda e: e.name))


def resolve(spec: ModelSpec, backend: str | None = None) -> BackendEntry:
    """The entry that serves ``spec`` (or the one named by ``backend``)."""
    if backend:
        by_name = {e.name: e for e in entries()}
        if backend not in by_name:
            raise UsageError(f"unknown backend {backend!r}", hint=f"choose one of: {', '.join(by_name)}")
        return by_name[backend]
    scored = [(e.claims(spec), e.name, e) for e in entries()]
    best = max(scored, key=lambda t: t[:2], default=(0, "", None))
    if best[0] <= 0:
        raise InvalidModelError(
            f"{spec.text} is not a model any backend recognises",
            hint="expected a .gguf file, a Hugging Face checkpoint directory (config.json), an MLX directory, or an http(s)://…/v1 URL",
        )
    return best[2]


def load(model: str | None, options: LoadOptions | None = None) -> Backend:
    """Load the model named by a spec string, offline."""
    options = options or LoadOptions()
    spec = parse_spec(model)
    entry = resolve(spec, options.backend)
    entry.check()
    module, func = entry.loader.split(":")
    return getattr(importlib.import_module(module), func)(spec, options)
