"""Evidence for a grounded critique: passages retrieved for a thinking's claims, not only for its question.

``claims`` splits a thinking into what it asserts: its numbered steps and its one-line sections (the hypothesis),
else its sentences, headings removed. ``Evidence(store)`` is the engine's evidence source: for the question and
each claim it searches the store, then takes the best hit of every query before the second-best of any (so each
claim gets checked against something), distinct chunks, at most ``k``. ``chunk_dict`` is the one shape a
retrieved chunk takes in prompts and transcripts (the reasoner's context uses it too).
"""

from __future__ import annotations

import re

_HEADING = re.compile(r"^\s*\*\*[^*\n]{1,80}\*\*:\s*")
_STEP = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def claims(thinking: str, most: int = 4) -> list[str]:
    """The thinking's claims, in order, at most ``most``: numbered or bulleted steps and one-line sections; a thinking
    without that layout gives its sentences."""
    found: list[str] = []
    for line in thinking.splitlines():
        text = _STEP.sub("", _HEADING.sub("", line)).strip()
        if len(text.split()) >= 4 and (_STEP.match(line) or _HEADING.match(line)):
            found.append(text)
    if not found:
        found = [s.strip() for s in _SENTENCE.split(_HEADING.sub("", thinking)) if len(s.split()) >= 4]
    return found[:most]


def chunk_dict(hit) -> dict:
    return {"id": hit.chunk_id, "text": hit.text, "source": f"{hit.path} {hit.span}".strip(), "score": round(float(hit.score), 4)}


class Evidence:
    """``(question, thinking) -> passages`` over a store (anything with ``search(query, k)`` returning hits)."""

    def __init__(self, store, k: int = 4, per_query: int = 2, most_claims: int = 4):
        self.store, self.k, self.per_query, self.most_claims = store, k, per_query, most_claims

    def __call__(self, question: str, thinking: str) -> list[dict]:
        queries = [question, *claims(thinking, self.most_claims)]
        results = [self.store.search(q, k=self.per_query) for q in queries]
        out, seen = [], set()
        for rank in range(self.per_query):
            for hits in results:
                if rank < len(hits) and hits[rank].chunk_id not in seen and len(out) < self.k:
                    seen.add(hits[rank].chunk_id)
                    out.append(chunk_dict(hits[rank]))
        return out


def open_rag(store_path: str):
    """The store a ``--rag`` names, read-only; a missing file is one clear line."""
    from pathlib import Path

    from ..errors import UsageError
    from .store import open_store

    if not Path(store_path).is_file():
        raise UsageError(f"RAG store not found: {store_path}", hint="build one with `preflexor-local index add DOCS --store FILE`")
    return open_store(store_path, readonly=True)
