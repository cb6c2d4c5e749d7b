"""In-process nearest-neighbour search over a store's vectors, with SQLite as the single source of truth.

sqlite-vec 0.1.9 searches by brute force inside SQLite at 4-11x the cost of a numpy matrix-vector product over
the same vectors. This module keeps the vectors in process and answers ``search`` itself:

* **flat** (up to ``KnnSettings.flat_max`` vectors): the unit vectors in one float32 matrix, one matrix-vector
  product, ``argpartition``: exact, so recall is 1.
* **ivf** (above it): spherical k-means puts the vectors into ``nlist ~ sqrt(n)`` lists, stored contiguously per
  list; a query scores the centroids, then only the vectors of the ``nprobe`` best lists, exactly (float32, no
  quantisation), so the scores it returns are the true cosines. ``nprobe`` is chosen when the lists are built:
  ``tune_probes`` takes sample vectors of the store as queries, finds their exact top-10 among the others, and
  keeps the smallest ``nprobe`` whose recall@10 reaches ``target_recall``. Where no ``nprobe`` reaches it while
  scanning at most ``max_scan`` of the vectors (random vectors with no structure), the store stays flat.

Scores are cosine similarities: stored and query vectors are normalised here, as sqlite-vec's cosine distance does.

**Staying right.** The store's ``vec_log`` table (filled by triggers on ``texts``, whose ids are the vector rowids
and which gain and lose rows in the same transactions as ``vectors``) records every vector added or removed, with
a growing ``seq``; its last ``seq`` is the store's *generation*. An index knows the generation it reflects. Before
each search it replays the log since then: removed ids are masked, added ids are read from SQLite into a small
exact *delta*. When the delta and the masked rows pass ``compact_fraction`` of the index, the index is rebuilt from
the vectors it holds (an ivf index reuses its centroids unless the store has halved or doubled since training).

**The file beside the store** (``<store>.knn``, above ``flat_max`` only) saves the next process the k-means
training (or the finding that it does not pay) and the full read from SQLite. It is written to a temporary name,
fsynced and renamed into place, so it is whole or absent. It is used only when its header names this store
(``store_id``), model, fingerprint and dimension, its generation is at most the store's and the log covers the
gap; after the log is replayed, its live count and id sum must equal those of ``texts`` and sampled vectors must
equal SQLite's. Otherwise (missing, damaged, another store's, ahead of a store restored from a copy) it is rebuilt
from SQLite and replaced. If a search's own snapshot cannot be followed, that search uses sqlite-vec's KNN.
A store without ``vec_log`` (made before it existed and not written since) gets an in-memory index that is
rebuilt whenever SQLite reports another connection's commit (``PRAGMA data_version``) or this one writes.

**Reading vectors fast.** Scanning ``vectors`` through the vec0 virtual table costs ~40 us a row (40 s for 1M).
sqlite-vec 0.1.9 keeps vectors in chunks (``vectors_chunks``: validity bitmap, int64 rowids;
``vectors_vector_chunks00``: the float32 vectors of the chunk), which read at disk speed. That layout is private to
sqlite-vec, so it is used only when the blob sizes fit it, and sampled vectors are compared with the public
``SELECT embedding FROM vectors WHERE rowid = ?``; anything else falls back to the public scan.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = 1
MAGIC = b"PLXKNN\x00\x01"
_ALIGN = 4096
_SPOT_CHECKS = 8
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


# ---- reading vectors from SQLite ----------------------------------------------------------------------------------


def _normalise(x: np.ndarray) -> np.ndarray:
    """Unit rows, in place (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.maximum(norms, np.float32(1e-12), out=norms)
    x /= norms
    return x


def _public_vectors(db, ids: list[int], dim: int) -> np.ndarray | None:
    out = np.empty((len(ids), dim), np.float32)
    for i, rowid in enumerate(ids):
        row = db.execute("SELECT embedding FROM vectors WHERE rowid = ?", (int(rowid),)).fetchone()
        if row is None:
            return None
        out[i] = np.frombuffer(row[0], np.float32)
    return out


class _LayoutError(Exception):
    """sqlite-vec's shadow tables do not look like 0.1.x's."""


_CHUNK_SQL = "SELECT c.chunk_id, c.size, c.validity, c.rowids, v.vectors FROM vectors_chunks c JOIN vectors_vector_chunks00 v ON v.rowid = c.chunk_id"


def _parse_chunk(row, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(live mask, rowids, vectors) of one sqlite-vec chunk row, all ``size`` long."""
    _, size, validity, rowids, vectors = row
    if size % 8 or len(validity) != size // 8 or len(rowids) != 8 * size or len(vectors) != 4 * size * dim:
        raise _LayoutError
    live = np.unpackbits(np.frombuffer(validity, np.uint8), bitorder="little").astype(bool)
    return live, np.frombuffer(rowids, "<i8"), np.frombuffer(vectors, "<f4").reshape(size, dim)


def _spot_check(db, ids: np.ndarray, vecs: np.ndarray, dim: int, seed: int) -> bool:
    """Do a few vectors equal what sqlite-vec's public API returns for their rowids?"""
    if not len(ids):
        return True
    pick = np.random.default_rng(seed).choice(len(ids), min(_SPOT_CHECKS, len(ids)), replace=False)
    want = _public_vectors(db, [int(i) for i in ids[pick]], dim)
    if want is None:
        return False
    return bool(np.allclose(_normalise(want), vecs[pick], atol=1e-6))


def read_all(db, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (rowid, unit vector) of ``vectors`` in the current snapshot, sorted by rowid."""
    count = db.execute("SELECT count(*) FROM texts").fetchone()[0]
    ids = np.empty(count, np.int64)
    vecs = np.empty((count, dim), np.float32)
    n = 0
    try:
        for row in db.execute(_CHUNK_SQL + " ORDER BY c.chunk_id"):
            live, rids, chunk = _parse_chunk(row, dim)
            m = int(live.sum())
            if n + m > count:
                raise _LayoutError
            ids[n : n + m] = rids[live]
            vecs[n : n + m] = chunk[live]
            n += m
    except Exception:  # _LayoutError, or no such table: another sqlite-vec layout
        n = -1
    if n == count:
        if count and not np.all(ids[1:] > ids[:-1]):
            order = np.argsort(ids)
            ids, vecs = ids[order], vecs[order]
        _normalise(vecs)
        if _spot_check(db, ids, vecs, dim, seed=count):
            return ids, vecs
    # the public path: a vec0 table scan, ~40 us a row
    id_list, blobs = [], []
    for rowid, blob in db.execute("SELECT rowid, embedding FROM vectors ORDER BY rowid"):
        id_list.append(rowid)
        blobs.append(blob)
    vecs = np.frombuffer(b"".join(blobs), np.float32).reshape(len(id_list), dim).copy()
    return np.asarray(id_list, np.int64), _normalise(vecs)


def read_some(db, ids: list[int], dim: int) -> np.ndarray | None:
    """Unit vectors of ``ids`` (in that order), or None if one is missing."""
    out = np.empty((len(ids), dim), np.float32)
    if len(ids) > 64:  # many (after a big ``index add``): read the sqlite-vec chunks that hold them
        try:
            where: dict[int, tuple[int, int]] = {}
            for part in range(0, len(ids), 500):
                sub = ids[part : part + 500]
                marks = ",".join("?" * len(sub))
                where.update(
                    (r[0], (r[1], r[2])) for r in db.execute(f"SELECT rowid, chunk_id, chunk_offset FROM vectors_rowids WHERE rowid IN ({marks})", sub)
                )
            chunks = {}
            for chunk_id in sorted({c for c, _ in where.values()}):
                chunks[chunk_id] = _parse_chunk(db.execute(_CHUNK_SQL + " WHERE c.chunk_id = ?", (chunk_id,)).fetchone(), dim)
            for i, rowid in enumerate(ids):
                chunk_id, at = where[rowid]
                live, rids, vecs = chunks[chunk_id]
                if not live[at] or rids[at] != rowid:
                    raise _LayoutError
                out[i] = vecs[at]
            _normalise(out)
            if _spot_check(db, np.asarray(ids, np.int64), out, dim, seed=len(ids)):
                return out
        except Exception:  # another sqlite-vec layout, or a missing id: the public API decides
            pass
    raw = _public_vectors(db, ids, dim)
    return None if raw is None else _normalise(raw)


# ---- building ------------------------------------------------------------------------------------------------------


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
        cents = _normalise(sums)
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


# ---- the file beside the store ---------------------------------------------------------------------------------------


def write_file(path: Path, header: dict, base: Base) -> None:
    """``MAGIC | u64 header length | JSON header | arrays, each 4096-aligned``; temp file, fsync, rename."""
    from ..atomic import atomic_file, tmp_name

    _remove_orphans(path, tmp_name(path, "file"))
    arrays = {"ids": base.ids, "vecs": base.vecs}
    if base.kind == "ivf":
        arrays.update(centroids=base.centroids, offsets=base.offsets)
    layout, pos = {}, 0
    for name, arr in arrays.items():
        layout[name] = {"offset": pos, "dtype": np.asarray(arr).dtype.str, "shape": list(np.shape(arr))}
        pos += -(-np.asarray(arr).nbytes // _ALIGN) * _ALIGN
    meta = dict(
        header,
        format=FORMAT,
        kind=base.kind,
        nprobe=base.nprobe,
        trained_n=base.trained_n,
        recall=base.recall,
        scanned=base.scanned,
        build_s=base.build_s,
        arrays=layout,
    )
    text = json.dumps(meta).encode()
    start = -(-(len(MAGIC) + 8 + len(text)) // _ALIGN) * _ALIGN
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC + len(text).to_bytes(8, "little") + text)
            for name, arr in arrays.items():
                fh.seek(start + layout[name]["offset"])
                np.ascontiguousarray(arr).tofile(fh)
            fh.truncate(start + pos)
            fh.flush()
            os.fsync(fh.fileno())


def _remove_orphans(path: Path, mine: Path) -> None:
    """Delete temp files of ``path`` left by killed writers (a 1M-vector index is 1.5 GB); live writers' stay."""
    prefix, suffix = mine.name.rsplit("-", 1)[0] + "-", ".part" + path.suffix
    for tmp in path.parent.glob(f"{prefix}*{suffix}"):
        pid = tmp.name[len(prefix) : -len(suffix)]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # alive, or not ours to ask about
            pass


def read_header(path: Path) -> tuple[dict, int] | None:
    """The JSON header and where the arrays start, or None for a missing or foreign file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(MAGIC) + 8)
            if len(head) < len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
                return None
            size = int.from_bytes(head[len(MAGIC) :], "little")
            if size > 1 << 24:
                return None
            meta = json.loads(fh.read(size))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    return meta, -(-(len(MAGIC) + 8 + size) // _ALIGN) * _ALIGN


def read_file(path: Path) -> tuple[dict, Base] | None:
    """The header and memory-mapped arrays of an index file, or None if it is missing, foreign or truncated."""
    got = read_header(path)
    if got is None:
        return None
    meta, start = got
    try:
        total = path.stat().st_size
        arrays = {}
        for name, spec in meta["arrays"].items():
            dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
            end = start + spec["offset"] + dtype.itemsize * int(np.prod(shape))
            if end > total:
                return None
            arrays[name] = np.memmap(path, dtype, "r", start + spec["offset"], shape) if np.prod(shape) else np.empty(shape, dtype)
        base = Base(
            meta["kind"],
            arrays["ids"],
            arrays["vecs"],
            arrays.get("centroids"),
            arrays.get("offsets"),
            int(meta["nprobe"]),
            int(meta["trained_n"]),
            float(meta["recall"]),
            float(meta["scanned"]),
            float(meta["build_s"]),
        )
    except (OSError, KeyError, TypeError, ValueError):
        return None
    n = len(base.ids)
    if base.vecs.shape != (n, meta.get("dim")) or meta.get("n") != n:
        return None
    if base.kind == "ivf" and (
        base.offsets is None
        or base.centroids is None
        or len(base.offsets) != base.nlist + 1
        or int(base.offsets[-1]) != n
        or not 1 <= base.nprobe <= base.nlist
    ):
        return None
    if base.kind not in ("flat", "ivf"):
        return None
    return meta, base


# ---- the index ---------------------------------------------------------------------------------------------------------


def generation(db) -> int | None:
    """The store's last ``vec_log`` seq (0 when empty), or None for a store without the log."""
    try:
        return db.execute("SELECT coalesce(max(seq), 0) FROM vec_log").fetchone()[0]
    except Exception:
        return None


class VectorIndex:
    """The in-process index of one open store. Not thread-safe by itself: the store calls it under its lock."""

    def __init__(self, file: Path | None, identity: dict, dim: int, settings: KnnSettings | None = None):
        self.file = file
        self.identity = identity  # store_id, embed_model, embed_fingerprint: must match a file's header
        self.dim = dim
        self.settings = settings or KnnSettings()
        self.base: Base | None = None
        self.gen: int | None = None  # generation reflected (None: store without a log)
        self.data_version: int | None = None
        self.stale = False  # this connection wrote to a store without a log
        self.persisted = False
        self.loaded_from = ""  # where the base came from: "file", "sqlite" (a full read) or "compacted"
        self._reset_changes()

    def _reset_changes(self) -> None:
        self.dead = np.zeros(0 if self.base is None else len(self.base.ids), bool)
        self.n_dead = 0
        self.delta_ids = np.empty(0, np.int64)
        self.delta_vecs = np.empty((0, self.dim), np.float32)
        self._pos: np.ndarray | None = None  # argsort of base ids, built on the first removal

    @property
    def size(self) -> int:
        return 0 if self.base is None else len(self.base.ids) - self.n_dead + len(self.delta_ids)

    # -- keeping up with SQLite --
    def prepare(self, read: Callable[[], AbstractContextManager]) -> None:
        """Bring the index up to the store's state: replay the log, else load the file, else rebuild.

        A rebuild reads SQLite inside one snapshot, then builds outside it (k-means on 1M vectors takes a
        minute and must not pin the WAL); the caller's own snapshot then replays what landed meanwhile.
        """
        with read() as db:
            gen = generation(db)
            if gen is None:  # a store without the log
                dv = db.execute("PRAGMA data_version").fetchone()[0]
                if self.base is not None and self.gen is None and dv == self.data_version and not self.stale:
                    return
                self.data_version, self.stale = dv, False
                fresh = read_all(db, self.dim)
            elif self.base is not None and self.gen is not None and self.catch_up(db):
                fresh = None
            elif self._load_file(db, gen):
                fresh = None
            else:
                fresh = read_all(db, self.dim)
        if fresh is not None:
            self._adopt(build(*fresh, self.settings), gen, "sqlite")
        elif self._needs_compaction():
            self._compact()

    def catch_up(self, db) -> bool:
        """Replay the log up to this snapshot (cheap); False when the index cannot follow it (then rebuild)."""
        gen = generation(db)
        if gen is None or self.base is None or self.gen is None:
            return gen is None and self.base is not None and not self.stale
        if gen == self.gen:
            return True
        if gen < self.gen:
            return False
        rows = db.execute("SELECT seq, text_id, op FROM vec_log WHERE seq > ? AND seq <= ? ORDER BY seq", (self.gen, gen)).fetchall()
        if len(rows) != gen - self.gen:  # a gap: the log was pruned past us
            return False
        last: dict[int, int] = {}
        for _, text_id, op in rows:
            last[int(text_id)] = int(op)
        touched = np.fromiter(last, np.int64, len(last))
        added = [t for t, op in last.items() if op > 0]
        if len(added) > max(self.settings.compact_min, len(self.base.ids)):
            return False  # more new vectors than old ones: one full read is faster
        vecs = read_some(db, added, self.dim)
        if vecs is None:
            return False
        # any change to an id retires the vector the index holds for it
        if len(self.delta_ids):
            keep = ~np.isin(self.delta_ids, touched)
            self.delta_ids, self.delta_vecs = self.delta_ids[keep], self.delta_vecs[keep]
        if len(self.base.ids):
            if self._pos is None:
                self._pos = np.argsort(self.base.ids, kind="stable")
            at = np.searchsorted(self.base.ids, touched, sorter=self._pos)
            at = np.minimum(at, len(self._pos) - 1)
            hit = self._pos[at][np.asarray(self.base.ids)[self._pos[at]] == touched]
            self.dead[hit] = True
            self.n_dead = int(self.dead.sum())
        if added:
            self.delta_ids = np.concatenate([self.delta_ids, np.asarray(added, np.int64)])
            self.delta_vecs = np.concatenate([self.delta_vecs, vecs])
        self.gen = gen
        return True

    def _needs_compaction(self) -> bool:
        changed = self.n_dead + len(self.delta_ids)
        return self.base is not None and changed > max(self.settings.compact_min, self.settings.compact_fraction * len(self.base.ids))

    def _compact(self) -> None:
        """Fold the delta and the removals into a new base (ivf keeps its lists while the size stays within 2x)."""
        base, keep = self.base, ~self.dead
        n = int(keep.sum()) + len(self.delta_ids)
        if base.kind == "ivf" and base.trained_n / 2 <= n <= base.trained_n * 2:
            new = regroup(base, keep, self.delta_ids, self.delta_vecs)
        else:
            ids = np.concatenate([np.asarray(base.ids)[keep], self.delta_ids])
            vecs = np.concatenate([np.asarray(base.vecs)[keep], self.delta_vecs])
            order = np.argsort(ids, kind="stable")
            new = build(ids[order], vecs[order], self.settings)
        self._adopt(new, self.gen, "compacted")

    def _adopt(self, base: Base, gen: int | None, source: str) -> None:
        self.base, self.gen, self.loaded_from, self.persisted = base, gen, source, False
        self._reset_changes()
        n = len(base.ids)
        if gen is not None and self.file is not None and n > self.settings.flat_max:  # smaller: read from SQLite in a blink
            header = {**self.identity, "dim": self.dim, "n": n, "generation": gen, "written": time.time()}
            try:
                write_file(self.file, header, base)
                self.persisted = True
            except OSError:  # a read-only folder: the index lives in memory only
                pass

    def _load_file(self, db, gen: int) -> bool:
        """Adopt the file beside the store if it is this store's and can be brought up to ``gen``."""
        if self.file is None:
            return False
        got = read_file(self.file)
        if got is None:
            return False
        meta, base = got
        if any(meta.get(k) != v for k, v in self.identity.items()) or meta.get("dim") != self.dim:
            return False
        file_gen = meta.get("generation")
        if not isinstance(file_gen, int) or file_gen > gen:
            return False
        self.base, self.gen, self.loaded_from, self.persisted = base, file_gen, "file", True
        self._reset_changes()
        if not self.catch_up(db) or not self._verify(db):
            self.base, self.gen = None, None
            return False
        return True

    def _verify(self, db) -> bool:
        """Live count and id sum equal those of ``texts``; sampled vectors equal SQLite's."""
        count, total = db.execute("SELECT count(*), coalesce(sum(id), 0) FROM texts").fetchone()
        live = np.asarray(self.base.ids)[~self.dead]
        if count != len(live) + len(self.delta_ids) or total != int(live.sum()) + int(self.delta_ids.sum()):
            return False
        pick = np.random.default_rng(count).choice(len(live), min(_SPOT_CHECKS, len(live)), replace=False) if len(live) else []
        rows = np.flatnonzero(~self.dead)[pick] if len(live) else np.empty(0, np.int64)
        return _spot_check(db, np.asarray(self.base.ids)[rows], np.asarray(self.base.vecs)[rows], self.dim, seed=0) if len(rows) else True

    # -- searching --
    def search(self, query: np.ndarray, k: int, nprobe: int | None = None) -> list[tuple[int, float]]:
        """The ``k`` nearest (id, cosine), best first."""
        base = self.base
        q = np.asarray(query, np.float32).reshape(-1)
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        if base.kind == "ivf":
            rows, scores = self._probe(q, k, nprobe or base.nprobe)
        else:
            rows, scores = None, np.asarray(base.vecs) @ q
        if self.n_dead:
            scores = np.where(self.dead if rows is None else self.dead[rows], -np.inf, scores)
        cand_ids = np.asarray(base.ids) if rows is None else np.asarray(base.ids)[rows]
        if len(self.delta_ids):
            cand_ids = np.concatenate([cand_ids, self.delta_ids])
            scores = np.concatenate([scores, self.delta_vecs @ q])
        k = min(k, len(scores))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        return [(int(cand_ids[i]), float(scores[i])) for i in top if scores[i] != -np.inf]

    def _probe(self, q: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        base = self.base
        cs = np.asarray(base.centroids) @ q
        offsets = base.offsets
        nprobe = min(nprobe, base.nlist)
        order = np.argpartition(-cs, nprobe - 1)[:nprobe] if nprobe < base.nlist else np.argsort(-cs)
        if nprobe < base.nlist and int((offsets[order + 1] - offsets[order]).sum()) < k + self.n_dead:
            order = np.argsort(-cs)  # too few candidates in the best lists: widen until there are enough
            need = np.cumsum(offsets[order + 1] - offsets[order])
            order = order[: int(np.searchsorted(need, k + self.n_dead)) + 1]
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

    def describe(self) -> dict:
        base = self.base
        if base is None:
            return {"kind": None}
        out = {
            "kind": base.kind,
            "vectors": self.size,
            "generation": self.gen,
            "from": self.loaded_from,
            "file": str(self.file) if self.persisted else None,
            "pending": len(self.delta_ids) + self.n_dead,
        }
        if base.kind == "ivf":
            out.update(nlist=base.nlist, nprobe=base.nprobe, est_recall_at_10=round(base.recall, 4), est_scanned=round(base.scanned, 4))
        return out


def knn_file_summary(path: Path) -> dict:
    """What an index file beside a store says about itself (header only; nothing is loaded or checked)."""
    got = read_header(path)
    if got is None:
        return {"kind": None, "file": None}
    meta = got[0]
    out = {"kind": meta.get("kind"), "vectors": meta.get("n"), "generation": meta.get("generation"), "file": str(path)}
    if meta.get("kind") == "ivf":
        out.update(nlist=len(meta["arrays"]["offsets"]["shape"]) and meta["arrays"]["offsets"]["shape"][0] - 1, nprobe=meta.get("nprobe"))
    return out
