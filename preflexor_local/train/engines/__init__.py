"""The train-engine registry: ``train orpo|dpo --engine NAME``.

Every module in this package that defines ``ENGINE = TrainEngine(...)``
registers an engine; no other file needs an edit. ``runner`` is a
"module:function" taking ``(TrainConfig, RunContext)`` and returning a
``TrainResult`` (see ``preflexor_local.train.run``). Modules here must import
their heavy engine (torch, mlx) inside the runner only, so discovery is cheap.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from functools import lru_cache

from ...errors import UsageError
from ...extras import installed, require


@dataclass(frozen=True)
class TrainEngine:
    name: str
    summary: str
    runner: str  # "module:function"
    requires: tuple[str, ...] = ()
    extra: str = ""
    methods: tuple[str, ...] = ("orpo", "dpo", "sft")

    @property
    def available(self) -> bool:
        return installed(self.requires)

    def check(self) -> None:
        require(f"the {self.name} train engine", self.requires, self.extra)

    def load_runner(self):
        module, func = self.runner.split(":")
        return getattr(importlib.import_module(module), func)


@lru_cache(maxsize=1)
def engines() -> dict[str, TrainEngine]:
    found: dict[str, TrainEngine] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("_"):
            continue
        entry = getattr(importlib.import_module(f"{__name__}.{mod.name}"), "ENGINE", None)
        if isinstance(entry, TrainEngine):
            found[entry.name] = entry
    return dict(sorted(found.items()))


def get_engine(name: str, method: str | None = None) -> TrainEngine:
    table = engines()
    if name not in table:
        raise UsageError(f"unknown train engine {name!r}", hint=f"choose one of: {', '.join(table) or 'none installed'}")
    engine = table[name]
    if method and method not in engine.methods:
        raise UsageError(f"the {name} engine does not train {method}", hint=f"it trains: {', '.join(engine.methods)}")
    engine.check()
    return engine
