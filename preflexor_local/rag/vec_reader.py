"""Reading a store's vectors out of sqlite-vec fast, checked against its public API.

Scanning ``vectors`` through the vec0 virtual table costs ~40 us a row (40 s for 1M). sqlite-vec 0.1.9 keeps
vectors in chunks (``vectors_chunks``: validity bitmap, int64 rowids; ``vectors_vector_chunks00``: the float32
vectors of the chunk), which read at disk speed. That layout is private to sqlite-vec, so it is used only when the
blob sizes fit it, and sampled vectors are compared with the public ``SELECT embedding FROM vectors WHERE rowid = ?``;
anything else falls back to the public scan. Every vector comes back as a unit vector (``exact.normalise``).
"""

from __future__ import annotations

import numpy as np

from .exact import normalise

SPOT_CHECKS = 8  # vectors compared with sqlite-vec's public API after a fast read


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


def spot_check(db, ids: np.ndarray, vecs: np.ndarray, dim: int, seed: int) -> bool:
    """Do a few vectors equal what sqlite-vec's public API returns for their rowids?"""
    if not len(ids):
        return True
    pick = np.random.default_rng(seed).choice(len(ids), min(SPOT_CHECKS, len(ids)), replace=False)
    want = _public_vectors(db, [int(i) for i in ids[pick]], dim)
    if want is None:
        return False
    return bool(np.allclose(normalise(want), vecs[pick], atol=1e-6))


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
        normalise(vecs)
        if spot_check(db, ids, vecs, dim, seed=count):
            return ids, vecs
    # the public path: a vec0 table scan, ~40 us a row
    id_list, blobs = [], []
    for rowid, blob in db.execute("SELECT rowid, embedding FROM vectors ORDER BY rowid"):
        id_list.append(rowid)
        blobs.append(blob)
    vecs = np.frombuffer(b"".join(blobs), np.float32).reshape(len(id_list), dim).copy()
    return np.asarray(id_list, np.int64), normalise(vecs)


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
            normalise(out)
            if spot_check(db, np.asarray(ids, np.int64), out, dim, seed=len(ids)):
                return out
        except Exception:  # another sqlite-vec layout, or a missing id: the public API decides
            pass
    raw = _public_vectors(db, ids, dim)
    return None if raw is None else normalise(raw)
