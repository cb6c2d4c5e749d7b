"""The exact scan: every unit vector scored against the query, the best ``k`` kept.

An index over a store's vectors (``Base``) is ``ids`` (text ids = vector rowids, sorted) and their unit ``vecs``
in one float32 matrix; a *flat* index is only that, searched by one matrix-vector product and ``argpartition``, so
its recall is 1. An *ivf* index (``ivf.py``) keeps the same rows grouped by list and scans only some lists; both
rank their candidates with ``top_k``. Scores are cosine similarities: stored and query vectors are normalised here,
as sqlite-vec's cosine distance does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def normalise(x: np.ndarray) -> np.ndarray:
    """Unit rows, in place (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, np.float32(1e-12), out=norms)
    x /= norms
    return x


def unit_query(query) -> np.ndarray:
    """The query as one float32 unit vector."""
    q = np.asarray(query, np.float32).reshape(-1)
    return q / max(float(np.linalg.norm(q)), 1e-12)


@dataclass
class Base:
    """An index over ``ids`` (text ids = vector rowids) and their unit ``vecs``; ivf keeps them grouped by list."""

    kind: str  # "flat" or "ivf"
    ids: np.ndarray
    vecs: np.ndarray
    centroids: np.ndarray | None = None
    offsets: np.ndarray | None = None  # list l is rows offsets[l]:offsets[l+1]
    nprobe: int = 0
    trained_n: int = 0
    recall: float = 1.0
    scanned: float = 1.0
    build_s: float = 0.0

    @property
    def nlist(self) -> int:
        return 0 if self.centroids is None else len(self.centroids)


def scan(base: Base, q: np.ndarray) -> np.ndarray:
    """The cosine of every row of ``base`` with the unit query ``q``."""
    return np.asarray(base.vecs) @ q


def top_k(cand_ids: np.ndarray, scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` best (id, score) of the candidates, best first; masked rows (score -inf) never count."""
    k = min(k, len(scores))
    if k <= 0:
        return []
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    return [(int(cand_ids[i]), float(scores[i])) for i in top if scores[i] != -np.inf]
