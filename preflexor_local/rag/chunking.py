"""Token-aware chunking with overlap.

Chunks are windows of at most ``size`` tokens of the embedding model's own
tokenizer (so nothing is silently truncated when embedded), overlapping by
``overlap`` tokens. A window ends at the best natural break in its second half:
a blank line, then a line break, then a sentence end, else at the token limit.
Defaults (set by the store): 200 tokens, 32 overlap, for MiniLM's 256-token input.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from .extract import Extracted


@dataclass(frozen=True)
class Chunk:
    text: str  # whitespace-tidied text as stored and embedded
    start: int  # character offsets into the extracted text
    end: int
    span: str

    @property
    def hash(self) -> str:
        return text_hash(self.text)


def tidy(text: str) -> str:
    text = re.sub(r"[ \t\f\v\u00a0]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def text_hash(text: str) -> str:
    """The dedupe key: the same words in the same order hash alike, whatever the whitespace."""
    return hashlib.sha256(" ".join(text.split()).encode("utf-8")).hexdigest()


def _break_score(text: str, end_char: int, next_start: int) -> int:
    gap = text[end_char:next_start]
    if "\n\n" in gap or gap.count("\n") >= 2:
        return 3
    if "\n" in gap:
        return 2
    if end_char and text[end_char - 1] in ".!?;:" and gap:
        return 1
    return 0


def _overlap_start(text: str, toks: list[tuple[int, int]], start: int, end: int, overlap: int) -> int:
    """Where the next window begins: ``overlap`` tokens back, moved to a sentence or line start if one is
    within the overlap (shorter overlap) or within another ``overlap`` tokens before it (longer overlap)."""
    nxt = max(end - overlap, start + 1)
    if overlap == 0:
        return nxt
    starts_sentence = lambda j: j > 0 and _break_score(text, toks[j - 1][1], toks[j][0]) > 0  # noqa: E731
    for j in range(nxt, end):
        if starts_sentence(j):
            return j
    for j in range(nxt - 1, max(end - 2 * overlap, start + 1) - 1, -1):
        if starts_sentence(j):
            return j
    return nxt


def chunk_text(ex: Extracted, offsets: Callable[[str], list[tuple[int, int]]], size: int, overlap: int) -> list[Chunk]:
    """Split ``ex.text`` into overlapping token windows; empty windows are dropped."""
    text = ex.text
    toks = [(s, e) for s, e in offsets(text) if e > s]
    n = len(toks)
    chunks: list[Chunk] = []
    start = 0
    while start < n:
        end = min(start + size, n)
        if end < n:
            best, best_score = end, 0
            for j in range(end - 1, start + size // 2 - 1, -1):  # j = last token of the window
                score = _break_score(text, toks[j][1], toks[j + 1][0])
                if score > best_score:
                    best, best_score = j + 1, score
                    if score == 3:
                        break
            end = best
        a, b = toks[start][0], toks[end - 1][1]
        body = tidy(text[a:b])
        if body:
            chunks.append(Chunk(body, a, b, ex.span(a, b)))
        if end >= n:
            break
        start = _overlap_start(text, toks, start, end, overlap)
    return chunks
