"""Retrieval for ``eval --rag STORE``: retrieved once per item, the same for every condition.

A fair comparison needs every condition to see the same evidence. For each item:

* the reasoner's context is retrieved once, for the item's question (without the options and the answer
  instruction, which are not what the store is about), and every condition and sample gets that list;
* the critic's evidence goes through one cache per item, keyed by the thinking it checks: two conditions that
  reach the same thinking (``rounds-2`` and ``rounds-3`` share their first round, ``adaptive`` repeats the
  longest run until it stops) get the very same passages, retrieved once. Evidence is queried with the item's
  question too, not the engine's prompt (which carries the answer instruction).

The item line records the context (``context``) and what the cache did (``evidence``: thinkings checked, and
how many checks reused an earlier retrieval).
"""

from __future__ import annotations

import threading

from ..rag.evidence import Evidence, chunk_dict
from .questions import Question


class ItemGrounding:
    """One item's context and its evidence cache; ``evidence`` is the engine's ``(question, thinking) -> passages``."""

    def __init__(self, question: str, context: list[dict], evidence: Evidence, lock: threading.Lock):
        self.question, self.context, self._source, self._lock = question, context, evidence, lock
        self._cache: dict[str, list[dict]] = {}
        self.reused = 0

    def evidence(self, question: str, thinking: str) -> list[dict]:
        # The engine passes its prompt as ``question``; the item's own question is the query (see the module doc).
        with self._lock:  # one store, searched by one thread at a time (samples of an item may run at once)
            if thinking in self._cache:
                self.reused += 1
            else:
                self._cache[thinking] = self._source(self.question, thinking)
            return [dict(p) for p in self._cache[thinking]]

    def record(self) -> dict:
        """What the item line says about its retrieval."""
        return {"context": self.context, "evidence": {"thinkings_checked": len(self._cache), "reused": self.reused}}


class Grounding:
    """A store for a whole run: ``for_item(q)`` retrieves an item's context and opens its evidence cache."""

    def __init__(self, store, rag_k: int = 5, evidence_k: int = 4):
        self.store, self.rag_k = store, rag_k
        self.source = Evidence(store, k=evidence_k)
        self.lock = threading.Lock()

    def for_item(self, q: Question) -> ItemGrounding:
        with self.lock:
            context = [chunk_dict(h) for h in self.store.search(q.question, k=self.rag_k)]
        return ItemGrounding(q.question, context, self.source, self.lock)
