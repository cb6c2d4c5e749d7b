"""Optional engines: whether their modules are installed, and the one-line error naming the extra to install."""

from __future__ import annotations

import importlib.util

from .errors import BackendUnavailableError


def installed(modules: tuple[str, ...]) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in modules)


def require(what: str, modules: tuple[str, ...], extra: str = "") -> None:
    """Raise ``BackendUnavailableError`` unless every module of ``what`` imports."""
    if not installed(modules):
        raise BackendUnavailableError(
            f"{what} needs {', '.join(modules)}, which is not installed",
            hint=f"pip install 'preflexor-local[{extra}]'" if extra else None,
        )
