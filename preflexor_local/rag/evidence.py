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
    """A retrieved chunk as prompts and transcripts show it; its source is short (``nacre.md lines 3-9``): a small
    model reads every character of it."""
    return {"id": hit.chunk_id, "text": hit.text, "source": hit.cite(), "path": hit.path, "score": round(float(hit.score), 4)}


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


BUILTIN = "builtin:"


def open_rag(spec: str):
    """The store a ``--rag`` names, read-only: a store file, or ``builtin:NAME`` — a corpus shipped with the package
    (``builtin:grounded``), indexed into a cached store on first use. A missing file is one clear line."""
    from pathlib import Path

    from ..errors import UsageError
    from .store import open_store

    if spec.startswith(BUILTIN):
        return open_store(builtin_store(spec[len(BUILTIN) :]), readonly=True)
    if not Path(spec).is_file():
        raise UsageError(f"RAG store not found: {spec}", hint="build one with `preflexor-local index add DOCS --store FILE`, or use --rag builtin:grounded")
    return open_store(spec, readonly=True)


def builtin_store(name: str):
    """The cached store of the shipped corpus ``name`` (``<home>/stores/NAME-<hash>.db``), built once: each passage
    is one file (``<id>.md``, its source as the title) under ``<home>/corpora/NAME``, indexed with the defaults. The
    hash is the corpus's, so an updated corpus gets a new store."""
    import hashlib
    import json
    import sys

    from ..atomic import atomic_dir, atomic_file
    from ..eval.corpus import load_corpus
    from ..models import home
    from .ingest import IndexConfig, index_folder

    passages = load_corpus(name)
    digest = hashlib.sha256(json.dumps(passages, sort_keys=True).encode()).hexdigest()[:12]
    store = home() / "stores" / f"{name}-{digest}.db"
    if store.is_file():
        return store
    print(f"note: indexing the built-in {name} corpus ({len(passages)} passages) into {store} once …", file=sys.stderr, flush=True)
    folder = home() / "corpora" / f"{name}-{digest}"
    if not folder.is_dir():
        # Processes started together each build under their own temporary name; the first folder stays in place
        # (another may be indexing it) and the last whole store wins (they are the same).
        with atomic_dir(folder, keep_existing=True) as tmp:
            for p in passages:
                (tmp / f"{p['id']}.md").write_text(f"# {p['source']}\n\n{p['text'].strip()}\n", encoding="utf-8")
    store.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(store) as partial:  # whole or absent: an interrupted build starts over
        index_folder([folder], partial, IndexConfig(progress=False))
    return store
