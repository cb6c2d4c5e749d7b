"""preflexor-local: PRefLexOR recursive reasoning, RAG, training and converters, offline.

Importing the package is cheap; heavy engines load when first used.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "ask"]


def __getattr__(name: str):
    if name == "ask":
        from .reasoning.ask import ask

        return ask
    raise AttributeError(name)
