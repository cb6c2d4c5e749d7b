"""In-process nearest-neighbour search over a store's vectors, with SQLite as the single source of truth.

sqlite-vec 0.1.9 searches by brute force inside SQLite at 4-11x the cost of a numpy matrix-vector product over
the same vectors. ``VectorIndex`` keeps the vectors in process and answers ``search`` itself:

* **flat** (up to ``KnnSettings.flat_max`` vectors): the exact scan (``exact.py``), so recall is 1.
* **ivf** (above it): k-means lists, the best ``nprobe`` of them scanned exactly, ``nprobe`` tuned on the store's
  own vectors to a target recall (``ivf.py``).

Its parts: ``exact.py`` (the exact scan and the index's arrays), ``ivf.py`` (lists, tuning, ``KnnSettings``),
``knn_file.py`` (the ``<store>.knn`` file) and ``vec_reader.py`` (reading vectors out of sqlite-vec fast); this
module keeps them in step with SQLite.

**Staying right.** The store's ``vec_log`` table (filled by triggers on ``texts``, whose ids are the vector rowids
and which gain and lose rows in the same transactions as ``vectors``) records every vector added or removed, with
a growing ``seq``; its last ``seq`` is the store's *generation*. An index knows the generation it reflects. Before
each search it replays the log since then: removed ids are masked, added ids are read from SQLite into a small
exact *delta*. When the delta and the masked rows pass ``compact_fraction`` of the index, the index is rebuilt from
the vectors it holds (an ivf index reuses its centroids unless the store has halved or doubled since training).

**The file beside the store** (``<store>.knn``, above ``flat_max`` only) is used only when its header names this
store (``store_id``), model, fingerprint and dimension, its generation is at most the store's and the log covers
the gap; after the log is replayed, its live count and id sum must equal those of ``texts`` and sampled vectors
must equal SQLite's. Otherwise (missing, damaged, another store's, ahead of a store restored from a copy) it is
rebuilt from SQLite and replaced. If a search's own snapshot cannot be followed, that search uses sqlite-vec's KNN.
A store without ``vec_log`` (made before it existed and not written since) gets an in-memory index that is
rebuilt whenever SQLite reports another connection's commit (``PRAGMA data_version``) or this one writes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

# The parts, re-exported: ``preflexor_local.rag.index`` stays the one import path for callers.
from .exact import Base, scan, top_k, unit_query
from .ivf import KnnSettings, assign, build, kmeans, probe, regroup, tune_probes
from .knn_file import FORMAT, MAGIC, knn_file_summary, read_file, read_header, write_file
from .vec_reader import SPOT_CHECKS, read_all, read_some, spot_check

__all__ = [
    "FORMAT",
    "MAGIC",
    "Base",
    "KnnSettings",
    "VectorIndex",
    "assign",
    "build",
    "generation",
    "kmeans",
    "knn_file_summary",
    "read_all",
    "read_file",
    "read_header",
    "read_some",
    "regroup",
    "tune_probes",
    "write_file",
]


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
        pick = np.random.default_rng(count).choice(len(live), min(SPOT_CHECKS, len(live)), replace=False) if len(live) else []
        rows = np.flatnonzero(~self.dead)[pick] if len(live) else np.empty(0, np.int64)
        return spot_check(db, np.asarray(self.base.ids)[rows], np.asarray(self.base.vecs)[rows], self.dim, seed=0) if len(rows) else True

    # -- searching --
    def search(self, query: np.ndarray, k: int, nprobe: int | None = None) -> list[tuple[int, float]]:
        """The ``k`` nearest (id, cosine), best first."""
        base = self.base
        q = unit_query(query)
        if base.kind == "ivf":
            rows, scores = probe(base, q, k, nprobe or base.nprobe, self.n_dead)
        else:
            rows, scores = None, scan(base, q)
        if self.n_dead:
            scores = np.where(self.dead if rows is None else self.dead[rows], -np.inf, scores)
        cand_ids = np.asarray(base.ids) if rows is None else np.asarray(base.ids)[rows]
        if len(self.delta_ids):
            cand_ids = np.concatenate([cand_ids, self.delta_ids])
            scores = np.concatenate([scores, self.delta_vecs @ q])
        return top_k(cand_ids, scores, k)

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
