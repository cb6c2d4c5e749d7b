"""Where pair generation draws its passages: a RAG store (``.db``), or plain text files as a ``TextCorpus``."""

from __future__ import annotations

import random
import re
from pathlib import Path

from ..errors import UsageError


class TextCorpus:
    """A store stand-in over plain text files (paragraphs as chunks; search by word overlap).

    For corpora too small to index, and for tests; ``preflexor_local.rag``'s store is the real thing.
    """

    def __init__(self, texts: list[str]):
        from ..rag.store import Hit

        self._hit = Hit
        self.chunks = [t.strip() for t in texts if t.strip()]

    @classmethod
    def from_path(cls, path: str | Path) -> TextCorpus:
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md")) if path.is_dir() else [path]
        return cls([para for f in files for para in re.split(r"\n\s*\n", f.read_text(encoding="utf-8", errors="replace"))])

    def random_chunks(self, k: int, seed: int | None = None):
        ids = random.Random(seed).sample(range(len(self.chunks)), min(k, len(self.chunks)))
        return [self._hit(i, self.chunks[i], "corpus", f"#{i}", 0.0) for i in ids]

    def search(self, query: str, k: int = 5):
        words = set(re.findall(r"\w+", query.lower()))
        scored = sorted(((len(words & set(re.findall(r"\w+", c.lower()))), i) for i, c in enumerate(self.chunks)), reverse=True)
        return [self._hit(i, self.chunks[i], "corpus", f"#{i}", float(s)) for s, i in scored[:k] if s > 0]


def open_corpus(path: str | Path):
    """A store file (``.db``) through the RAG API, or a text file/folder as a ``TextCorpus``."""
    path = Path(path).expanduser()
    if path.is_dir() or path.suffix in (".txt", ".md"):
        if not path.exists():
            raise UsageError(f"corpus {path} does not exist")
        corpus = TextCorpus.from_path(path)
        if not corpus.chunks:
            raise UsageError(f"corpus {path} has no text", hint="add .txt/.md files, or index documents into a store")
        return corpus
    from ..rag import open_store

    if not path.exists():
        raise UsageError(f"no store at {path}", hint=f"build one first: preflexor-local index add FOLDER --store {path}")
    store = open_store(path, readonly=True)
    if not store.stats().get("chunks"):
        raise UsageError(f"the store {path} is empty", hint=f"index documents first: preflexor-local index add FOLDER --store {path}")
    return store
