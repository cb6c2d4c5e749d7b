"""The in-process KNN index: exact where flat, recall-checked where IVF, and never ahead of or behind SQLite.

Synthetic vectors go straight into a store's tables (no embedding model), so every answer can be checked against
numpy brute force over exactly the vectors the store holds at that moment.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pytest

from preflexor_local.rag import index as knn
from preflexor_local.rag import open_store, vec_reader
from preflexor_local.rag.index import KnnSettings

DIM = 32


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


CENTRES = unit(np.random.default_rng(99).standard_normal((200, DIM)))


def clustered(n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors around 200 fixed random centres (cosine ~0.8 to their centre): data, and queries, with structure."""
    return unit(CENTRES[rng.integers(0, len(CENTRES), n)] + rng.standard_normal((n, DIM)) * np.sqrt(0.5 / DIM))


def new_store(path: Path, settings: KnnSettings | None = None):
    store = open_store(path)
    meta = {"schema": "1", "embed_model": "synthetic", "embed_ref": "synthetic", "embed_fingerprint": "synthetic", "embed_dim": str(DIM)}
    store._create({**meta, "chunk_tokens": "200", "chunk_overlap": "32", "created": "2026-01-01T00:00:00Z"})
    store.knn_settings = settings
    return store


def add(store, ids, vecs) -> None:
    """One document holding one chunk per vector; ``text`` names the vector's id."""
    ids = [int(i) for i in ids]
    tag = uuid.uuid4().hex
    with store.write() as db:
        doc = db.execute(
            "INSERT INTO documents(path, content_hash, size, mtime, kind, n_chunks, indexed_at) VALUES (?, 'h', 0, 0, 'text', ?, 0) RETURNING id",
            (f"/synthetic/{uuid.uuid4().hex}", len(ids)),
        ).fetchone()[0]
        db.executemany("INSERT INTO texts(id, hash, text) VALUES (?, ?, ?)", [(i, f"{tag}-{i}", f"vector {i}") for i in ids])
        db.executemany(
            "INSERT INTO vectors(rowid, embedding) VALUES (?, ?)", [(i, np.asarray(v, np.float32).tobytes()) for i, v in zip(ids, vecs, strict=True)]
        )
        db.executemany(
            "INSERT INTO chunks(doc_id, seq, text_id, span, start_char, end_char) VALUES (?, ?, ?, 'line 1', 0, 0)", [(doc, j, i) for j, i in enumerate(ids)]
        )


def remove(store, ids) -> None:
    with store.write() as db:
        for i in ids:
            db.execute("DELETE FROM chunks WHERE text_id = ?", (int(i),))
            db.execute("DELETE FROM vectors WHERE rowid = ?", (int(i),))
            db.execute("DELETE FROM texts WHERE id = ?", (int(i),))


def found(store, q, k=10) -> list[int]:
    return [int(h.text.split()[1]) for h in store.search_vector(q, k)]


def exact(truth: dict[int, np.ndarray], queries, k=10) -> list[list[int]]:
    """numpy brute force over ``truth`` (id -> vector): the ids of each query's ``k`` nearest, best first."""
    ids = np.fromiter(truth, np.int64)
    scores = unit(np.asarray(queries, np.float32)) @ unit(np.stack([truth[i] for i in ids])).T
    return [ids[np.argsort(-s, kind="stable")[:k]].tolist() for s in scores]


def recall(store, truth, queries, k=10) -> float:
    """Mean recall@k of the store's search against numpy brute force."""
    hits = sum(len(set(found(store, q, k)) & set(want)) for q, want in zip(queries, exact(truth, queries, k), strict=True))
    return hits / (k * len(queries))


def test_flat_index_is_exact_with_sqlite_vec_scores(tmp_path):
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((3000, DIM)).astype(np.float32)  # not unit: cosine must normalise both sides
    with new_store(tmp_path / "s.db") as store:
        add(store, range(1, 3001), vecs)
        queries = rng.standard_normal((20, DIM)).astype(np.float32)
        for q, want in zip(queries, exact(dict(zip(range(1, 3001), vecs, strict=True)), queries), strict=True):
            hits = store.search_vector(q, 10)
            assert [int(h.text.split()[1]) for h in hits] == want
            with store.read() as db:  # the same cosines sqlite-vec computes
                ref = dict(store._knn_sqlite(db, q.tobytes(), 10))
            assert [h.score for h in hits] == pytest.approx([ref[int(h.text.split()[1])] for h in hits], abs=1e-5)
        assert store.stats()["knn"]["kind"] == "flat"
        assert not (tmp_path / "s.db.knn").exists()  # small stores are read from SQLite, no file


@pytest.mark.parametrize("data", ["clustered", "uniform"])
def test_ivf_recall_against_exact_search(tmp_path, data):
    rng = np.random.default_rng(1)
    n = 12_000
    vecs = clustered(n, rng) if data == "clustered" else unit(rng.standard_normal((n, DIM)))
    settings = KnnSettings(flat_max=2000)
    with new_store(tmp_path / "s.db", settings) as store:
        add(store, range(1, n + 1), vecs)
        truth = dict(zip(range(1, n + 1), vecs, strict=True))
        info = store.sync_index()
        queries = clustered(100, rng) if data == "clustered" else unit(rng.standard_normal((100, DIM)))
        got = recall(store, truth, queries)
        if data == "clustered":  # structure: ivf pays off and reaches the recall it was tuned for
            assert info["kind"] == "ivf" and info["est_recall_at_10"] >= 0.98
            assert info["est_scanned"] < 0.3 and got >= 0.95, (info, got)
        else:  # no structure: no nprobe reaches 0.98 below 30 % of the vectors, so the store stays exact
            assert info["kind"] == "flat" and got == 1.0, info
        assert (tmp_path / "s.db.knn").exists()


def test_index_follows_other_writers_and_id_reuse(tmp_path):
    rng = np.random.default_rng(2)
    settings = KnnSettings(flat_max=2000, compact_fraction=0.5)
    db = tmp_path / "s.db"
    with new_store(db, settings) as writer:
        vecs = clustered(6000, rng)
        add(writer, range(1, 6001), vecs)
        truth = dict(zip(range(1, 6001), vecs, strict=True))
        reader = open_store(db, readonly=True)
        reader.knn_settings = settings
        q0 = vecs[10] + 0.01
        assert found(reader, q0)[0] == 11 and reader.stats()["knn"]["kind"] == "ivf"
        # another connection removes the best hit, re-uses the largest id for a new vector, and adds more
        remove(writer, [11, 6000])
        del truth[11], truth[6000]
        new = {6000: vecs[10] * -1.0, **{i: v for i, v in zip(range(6001, 6201), clustered(200, rng), strict=True)}}
        new[6100] = vecs[10] + 0.02  # the new best match for q0
        add(writer, list(new), list(new.values()))
        truth.update(new)
        assert found(reader, q0)[0] == 6100
        assert 11 not in found(reader, q0, 50)
        assert found(reader, -q0)[0] == 6000  # the re-used id carries its new vector
        queries = clustered(50, rng)
        assert recall(reader, truth, queries) >= 0.95
        info = reader.stats()["knn"]
        assert info["vectors"] == len(truth) and info["pending"] > 0  # followed by replaying vec_log
        reader.close()


def test_file_is_reused_then_caught_up_or_rebuilt_when_it_cannot_be_trusted(tmp_path):
    rng = np.random.default_rng(3)
    settings = KnnSettings(flat_max=2000)
    db, other = tmp_path / "s.db", tmp_path / "t.db"
    vecs = clustered(5000, rng)
    with new_store(db, settings) as store:
        add(store, range(1, 5001), vecs)
        assert store.sync_index()["from"] == "sqlite"
    truth = dict(zip(range(1, 5001), vecs, strict=True))
    queries = clustered(30, rng)

    def reopen(path=db):
        s = open_store(path)
        s.knn_settings = settings
        return s

    with reopen() as store:  # a new process: the file is used as is
        assert store.sync_index()["from"] == "file"
        assert recall(store, truth, queries) >= 0.95
        add(store, range(5001, 5101), clustered(100, rng))  # the file is now behind the store
        with store.read() as conn:
            truth.update(zip(range(5001, 5101), knn.read_some(conn, list(range(5001, 5101)), DIM), strict=True))
    with reopen() as store:
        info = store.sync_index()
        assert info["from"] == "file" and info["pending"] == 100 and info["vectors"] == 5100
        assert recall(store, truth, queries) >= 0.95

    # a writer killed mid-way leaves a temp file; the next write removes it (only a live writer's stays)
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    orphan = tmp_path / f".s.db.knn.file-{dead}.part.knn"
    orphan.write_bytes(b"half an index")
    live = tmp_path / f".s.db.knn.file-{os.getppid()}.part.knn"
    live.write_bytes(b"someone else's, still being written")
    more = clustered(100, rng)
    with reopen() as store:
        add(store, range(5101, 5201), more)
        truth.update(zip(range(5101, 5201), more, strict=True))
        store._index()._compact()  # folds the 200 new vectors in and rewrites the file
    assert not orphan.exists() and live.exists()
    live.unlink()

    # a file that cannot be trusted is rebuilt from SQLite, never used
    good = (tmp_path / "s.db.knn").read_bytes()
    cases = {
        "truncated": lambda: (tmp_path / "s.db.knn").write_bytes(good[: len(good) // 2]),
        "garbage": lambda: (tmp_path / "s.db.knn").write_bytes(b"not an index" * 100),
        "missing": lambda: (tmp_path / "s.db.knn").unlink(),
    }
    for name, spoil in cases.items():
        spoil()
        with reopen() as store:
            assert store.sync_index()["from"] == "sqlite", name
            assert recall(store, truth, queries) >= 0.95
    # another store's file, and a file ahead of the store (the store was restored from an older copy)
    shutil.copy(db, other)
    with reopen(other) as store:
        add(store, [9999], clustered(1, rng))
        store.sync_index()
    shutil.copy(tmp_path / "t.db.knn", tmp_path / "s.db.knn")
    with reopen() as store:
        assert store.sync_index()["from"] == "sqlite"  # same store_id, but its file is from a later generation
    with new_store(tmp_path / "u.db", settings) as fresh:
        add(fresh, range(1, 5101), np.stack([truth[i] for i in range(1, 5101)]))
    shutil.copy(tmp_path / "s.db.knn", tmp_path / "u.db.knn")
    with reopen(tmp_path / "u.db") as store:
        assert store.sync_index()["from"] == "sqlite"  # same vectors, another store_id


def test_log_gap_and_store_without_log(tmp_path):
    rng = np.random.default_rng(4)
    db = tmp_path / "s.db"
    with new_store(db) as writer:
        vecs = clustered(500, rng)
        add(writer, range(1, 501), vecs)
        truth = dict(zip(range(1, 501), vecs, strict=True))
        reader = open_store(db, readonly=True)
        q = vecs[7]
        assert found(reader, q)[0] == 8
        # the log loses entries the reader has not seen (pruned): it must rebuild, not guess
        add(writer, [501], [-q])
        truth[501] = -q
        with writer.write() as conn:
            conn.execute("DELETE FROM vec_log WHERE seq = (SELECT max(seq) FROM vec_log)")
            conn.execute("INSERT INTO vec_log(seq, text_id, op) VALUES ((SELECT max(seq) + 5 FROM vec_log), 501, 1)")
        assert found(reader, -q)[0] == 501
        # an old store: no log, no store_id; another connection's commits and our own are both seen
        with writer.write() as conn:
            for name in ("texts_log_insert", "texts_log_delete", "texts_log_update"):
                conn.execute(f"DROP TRIGGER {name}")
            conn.execute("DROP TABLE vec_log")
            conn.execute("DELETE FROM meta WHERE key = 'store_id'")
        reader.close()
        reader = open_store(db, readonly=True)
        assert found(reader, q)[0] == 8
        remove(writer, [8])
        assert found(reader, q)[0] != 8
        add(writer, [8], [q])
        assert found(reader, q)[0] == 8
        assert found(writer, -q)[0] == 501
        remove(writer, [501])
        assert found(writer, -q)[0] != 501
        assert not (tmp_path / "s.db.knn").exists()
        reader.close()


def test_private_sqlite_vec_layout_is_checked_and_has_a_public_fallback(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    with new_store(tmp_path / "s.db") as store:
        vecs = rng.standard_normal((300, DIM)).astype(np.float32)
        add(store, range(1, 301), vecs)
        remove(store, [5, 6])
        with store.read() as db:
            ids, fast = knn.read_all(db, DIM)
            some = knn.read_some(db, list(range(100, 200)), DIM)
        keep = [i for i in range(1, 301) if i not in (5, 6)]
        assert ids.tolist() == keep
        assert np.allclose(fast, unit(vecs[np.asarray(keep) - 1]), atol=1e-6)
        assert np.allclose(some, unit(vecs[99:199]), atol=1e-6)

        def other_layout(row, dim):
            raise vec_reader._LayoutError

        monkeypatch.setattr(vec_reader, "_parse_chunk", other_layout)
        with store.read() as db:
            ids2, slow = knn.read_all(db, DIM)
            assert knn.read_some(db, [5], DIM) is None  # a removed id is missing, not guessed
            assert np.array_equal(knn.read_some(db, list(range(100, 200)), DIM), some)
        assert ids2.tolist() == keep and np.array_equal(slow, fast)


def test_compaction_folds_changes_into_the_lists_and_the_file(tmp_path):
    rng = np.random.default_rng(6)
    settings = KnnSettings(flat_max=2000, compact_fraction=0.05, compact_min=10)
    db = tmp_path / "s.db"
    with new_store(db, settings) as store:
        vecs = clustered(5000, rng)
        add(store, range(1, 5001), vecs)
        truth = dict(zip(range(1, 5001), vecs, strict=True))
        first = store.sync_index()
        assert first["kind"] == "ivf"
        more = clustered(400, rng)
        add(store, range(5001, 5401), more)
        remove(store, range(1, 101))
        truth.update(zip(range(5001, 5401), more, strict=True))
        for i in range(1, 101):
            del truth[i]
        info = store.sync_index()  # 500 changes > 5 % of 5000: regrouped with the same centroids, file rewritten
        assert info["from"] == "compacted" and info["pending"] == 0 and info["vectors"] == 5300 and info["file"]
        assert info["nlist"] == first["nlist"] and info["nprobe"] == first["nprobe"]
        assert recall(store, truth, clustered(50, rng)) >= 0.95
    with open_store(db) as again:
        again.knn_settings = settings
        assert again.sync_index()["from"] == "file" and again.sync_index()["generation"] == info["generation"]
