"""The local RAG store: sqlite-vec in one SQLite file, offline embeddings, crash-safe ingest.

Stable API (used by ``ask --rag`` and the training-data generator)::

    from preflexor_local.rag import open_store
    store = open_store("bio.db")                 # embed_model=None: the store's own model
    store.search("toughening in nacre", k=5)     # -> list[Hit], best first
    store.random_chunks(3, seed=0)               # seeded uniform sample of chunks
    store.neighbours(hit.chunk_id, k=5)          # walk the corpus as a graph
    store.stats()                                # counts, model, dimension, size

    from preflexor_local.rag import index_folder, IndexConfig
    report = index_folder(["papers", "notes"], "bio.db", IndexConfig())

``Hit(chunk_id, text, path, span, score)``; ``score`` is the cosine similarity.
"""

from __future__ import annotations

from .db import StoreError
from .store import Hit, Store, open_store

__all__ = ["Hit", "IndexConfig", "IndexReport", "Store", "StoreError", "index_folder", "open_store", "remove_paths"]


def __getattr__(name: str):
    if name in ("IndexConfig", "IndexReport", "index_folder", "remove_paths"):
        from . import ingest

        return getattr(ingest, name)
    raise AttributeError(name)
