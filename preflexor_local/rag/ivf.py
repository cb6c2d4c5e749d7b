"""The IVF index: spherical k-means lists over the unit vectors, the best ``nprobe`` lists scanned exactly.

Above ``KnnSettings.flat_max`` vectors, spherical k-means puts the vectors into ``nlist ~ sqrt(n)`` lists, stored
contiguously per list; a query scores the centroids, then only the vectors of the ``nprobe`` best lists, exactly
(float32, no quantisation), so the scores it returns are the true cosines. ``nprobe`` is chosen when the lists are
built: ``tune_probes`` takes sample vectors of the store as queries, finds their exact top-10 among the others, and
keeps the smallest ``nprobe`` whose recall@10 reaches ``target_recall``. Where no ``nprobe`` reaches it while
scanning at most ``max_scan`` of the vectors (random vectors with no structure), the store stays flat
(``exact.py``): ``build`` decides which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .exact import Base, normalise

_TUNE_K = 10


@dataclass(frozen=True)
class KnnSettings:
    """How a store's vectors are indexed in process (defaults measured with bench/rag.py)."""

    flat_max: int = 200_000  # exact scan up to this many vectors; above, an ivf index, saved as <store>.knn
    target_recall: float = 0.98  # recall@10 an ivf index must reach on the store's own sample vectors
    max_scan: float = 0.3  # an ivf index that needs to scan more than this fraction of the vectors is not worth it
    compact_fraction: float = 0.1  # fold the log's changes into the index when they pass this share of it ...
    compact_min: int = 1000  # ... and this many vectors
    lists_per_sqrt: float = 1.0  # nlist = this * sqrt(n)
    tune_queries: int = 200
    kmeans_iters: int = 10
    seed: int = 0


def assign(x: np.ndarray, centroids: np.ndarray, block: int = 16384) -> np.ndarray:
    """The nearest centroid (largest dot product) of every row."""
    out = np.empty(len(x), np.int64)
    for i in range(0, len(x), block):
        out[i : i + block] = np.argmax(x[i : i + block] @ centroids.T, axis=1)
    return out


def kmeans(x: np.ndarray, nlist: int, iters: int, rng: np.random.Generator, train_per_list: int = 50) -> np.ndarray:
    """Spherical k-means on a sample of ``train_per_list * nlist`` rows; empty lists are re-seeded."""
    sample = x[np.sort(rng.choice(len(x), min(len(x), train_per_list * nlist), replace=False))]
    cents = sample[rng.choice(len(sample), nlist, replace=False)].copy()
    for _ in range(iters):
        a = assign(sample, cents)
        counts = np.bincount(a, minlength=nlist)
        used = counts > 0
        sums = np.empty_like(cents)
        sums[used] = np.add.reduceat(sample[np.argsort(a, kind="stable")], (np.cumsum(counts) - counts)[used], axis=0)
        sums[~used] = sample[rng.choice(len(sample), int((~used).sum()), replace=False)]
        cents = normalise(sums)
    return cents


def tune_probes(
    vecs: np.ndarray, lists: np.ndarray, sizes: np.ndarray, centroids: np.ndarray, settings: KnnSettings, rng: np.random.Generator
) -> tuple[int, float, float] | None:
    """(nprobe, estimated recall@10, estimated scanned fraction), or None where recall needs too large a scan.

    Queries are sample vectors of the store; their truth is the exact top-10 among all the other vectors.
    A true neighbour is found at ``nprobe`` when its list is among the query's ``nprobe`` best centroids.
    """
    n, nlist = len(vecs), len(centroids)
    m = min(settings.tune_queries, n)
    picks = rng.choice(n, m, replace=False)
    q = vecs[picks]
    k = min(_TUNE_K, n - 1)
    truth = np.empty((m, k), np.int64)
    for i in range(0, m, 16):
        s = q[i : i + 16] @ vecs.T
        s[np.arange(len(s)), picks[i : i + 16]] = -np.inf
        truth[i : i + 16] = np.argpartition(-s, k - 1, axis=1)[:, :k]
    order = np.argsort(-(q @ centroids.T), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(nlist), order.shape), axis=1)
    need = np.take_along_axis(rank, lists[truth], axis=1)  # the nprobe at which each true neighbour is found
    found = np.sort(need.ravel())
    # smallest p with mean(need < p) >= target
    idx = int(np.ceil(settings.target_recall * found.size)) - 1
    nprobe = int(found[max(idx, 0)]) + 1
    scanned = float(np.mean(np.cumsum(sizes[order], axis=1)[:, nprobe - 1])) / n
    if scanned > settings.max_scan:
        return None
    recall = float(np.mean(need < nprobe))
    return nprobe, recall, scanned


def build(ids: np.ndarray, vecs: np.ndarray, settings: KnnSettings) -> Base:
    """A flat or ivf index over unit vectors (ids sorted); ivf trains its lists and tunes ``nprobe`` here."""
    t0 = time.perf_counter()
    n = len(ids)
    if n <= settings.flat_max:
        return Base("flat", ids, vecs)
    rng = np.random.default_rng(settings.seed)
    cents = kmeans(vecs, int(np.clip(round(settings.lists_per_sqrt * np.sqrt(n)), 16, 8192)), settings.kmeans_iters, rng)
    lists = assign(vecs, cents)
    sizes = np.bincount(lists, minlength=len(cents))
    tuned = tune_probes(vecs, lists, sizes, cents, settings, rng)
    if tuned is None:
        return Base("flat", ids, vecs, build_s=time.perf_counter() - t0)
    nprobe, recall, scanned = tuned
    return _grouped(ids, vecs, lists, cents, Base("ivf", ids, vecs, cents, None, nprobe, n, recall, scanned, time.perf_counter() - t0))


def _grouped(ids: np.ndarray, vecs: np.ndarray, lists: np.ndarray, cents: np.ndarray, like: Base) -> Base:
    order = np.argsort(lists, kind="stable")
    offsets = np.zeros(len(cents) + 1, np.int64)
    np.cumsum(np.bincount(lists, minlength=len(cents)), out=offsets[1:])
    return Base("ivf", ids[order], vecs[order], cents, offsets, like.nprobe, like.trained_n, like.recall, like.scanned, like.build_s)


def regroup(base: Base, keep: np.ndarray, add_ids: np.ndarray, add_vecs: np.ndarray) -> Base:
    """``base`` without the rows not in ``keep``, plus new vectors put in their nearest lists (no retraining)."""
    t0 = time.perf_counter()
    old_lists = np.repeat(np.arange(base.nlist), np.diff(base.offsets))[keep]
    lists = np.concatenate([old_lists, assign(add_vecs, np.asarray(base.centroids))])
    ids = np.concatenate([np.asarray(base.ids)[keep], add_ids])
    vecs = np.concatenate([np.asarray(base.vecs)[keep], add_vecs])
    out = _grouped(ids, vecs, lists, np.asarray(base.centroids), base)
    out.build_s = time.perf_counter() - t0
    return out


def probe(base: Base, q: np.ndarray, k: int, nprobe: int, n_dead: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cosines) of the vectors in the ``nprobe`` lists nearest the unit query ``q``.

    Where those lists hold fewer than ``k + n_dead`` vectors (``n_dead``: rows the caller masks), more lists are
    taken, best first, until they hold enough.
    """
    cs = np.asarray(base.centroids) @ q
    offsets = base.offsets
    nprobe = min(nprobe, base.nlist)
    order = np.argpartition(-cs, nprobe - 1)[:nprobe] if nprobe < base.nlist else np.argsort(-cs)
    if nprobe < base.nlist and int((offsets[order + 1] - offsets[order]).sum()) < k + n_dead:
        order = np.argsort(-cs)  # too few candidates in the best lists: widen until there are enough
        need = np.cumsum(offsets[order + 1] - offsets[order])
        order = order[: int(np.searchsorted(need, k + n_dead)) + 1]
    order = np.sort(order)  # read the file front to back
    vecs = base.vecs
    parts, rows = [], []
    for lst in order.tolist():
        a, b = int(offsets[lst]), int(offsets[lst + 1])
        if b > a:
            parts.append(vecs[a:b] @ q)
            rows.append(np.arange(a, b))
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    return np.concatenate(rows), np.concatenate(parts)
