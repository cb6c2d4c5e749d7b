"""The RAG store: one SQLite file with sqlite-vec vectors, documents and chunks.

Layout (schema 1)::

    meta(key, value)            embed_model, embed_ref, embed_fingerprint, embed_dim,
                                chunk_tokens, chunk_overlap, schema, created
    documents(id, path UNIQUE, content_hash, size, mtime, kind, n_chunks, indexed_at)
    texts(id, hash UNIQUE, text) every distinct chunk text, embedded once
    chunks(id, doc_id, seq, text_id, span, start_char, end_char)
    vectors  vec0(embedding float[dim] distance_metric=cosine), rowid = texts.id
    vec_log(seq, text_id, op)   +1/-1 per vector added/removed, written by triggers on texts

A document and all of its chunks are written in one transaction (with WAL), so
a killed indexer leaves whole documents or nothing. Readers take a snapshot per
call and are never blocked by a writer. Scores are cosine similarities (1 = same
direction).

Searches run in process (``index.VectorIndex``: exact numpy scan, or IVF lists
above 200k vectors, optionally saved as ``<store>.knn``), kept in step with
SQLite through ``vec_log``; SQLite stays the only source of truth, and
sqlite-vec's own KNN answers whenever the index cannot follow a snapshot.
``vec_log`` and ``meta.store_id`` are added to older stores by the next
``index add`` (no schema change: older versions just keep the log filled).
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UsageError
from .db import StoreError, connect, driver_name
from .embed import DEFAULT_NAME, Embedder, ModelRef, load_embedder, resolve_model

SCHEMA = 1
DEFAULT_CHUNK_TOKENS = 200
DEFAULT_OVERLAP = 32
MAX_K = 4096  # sqlite-vec's limit for one KNN query

if TYPE_CHECKING:  # numpy is imported on the first search, not with the store
    from .index import KnnSettings, VectorIndex

_TABLES = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents(
    id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, content_hash TEXT NOT NULL,
    size INTEGER NOT NULL, mtime REAL NOT NULL, kind TEXT NOT NULL,
    n_chunks INTEGER NOT NULL, indexed_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS documents_hash ON documents(content_hash);
CREATE TABLE IF NOT EXISTS texts(id INTEGER PRIMARY KEY, hash TEXT NOT NULL UNIQUE, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks(
    id INTEGER PRIMARY KEY, doc_id INTEGER NOT NULL, seq INTEGER NOT NULL,
    text_id INTEGER NOT NULL, span TEXT NOT NULL, start_char INTEGER NOT NULL, end_char INTEGER NOT NULL,
    UNIQUE(doc_id, seq));
CREATE INDEX IF NOT EXISTS chunks_text ON chunks(text_id);
"""

# Every vector added or removed, in commit order, for in-process indexes to follow (texts.id = vectors.rowid,
# and both tables gain and lose rows in the same transactions). Its last seq is the store's "generation".
_LOG = (
    "CREATE TABLE IF NOT EXISTS vec_log(seq INTEGER PRIMARY KEY, text_id INTEGER NOT NULL, op INTEGER NOT NULL)",
    "CREATE TRIGGER IF NOT EXISTS texts_log_insert AFTER INSERT ON texts BEGIN INSERT INTO vec_log(text_id, op) VALUES (new.id, 1); END",
    "CREATE TRIGGER IF NOT EXISTS texts_log_delete AFTER DELETE ON texts BEGIN INSERT INTO vec_log(text_id, op) VALUES (old.id, -1); END",
    "CREATE TRIGGER IF NOT EXISTS texts_log_update AFTER UPDATE OF id ON texts "
    "BEGIN INSERT INTO vec_log(text_id, op) VALUES (old.id, -1); INSERT INTO vec_log(text_id, op) VALUES (new.id, 1); END",
)


@dataclass(frozen=True)
class Hit:
    """One retrieved chunk. ``span`` is "p.3", "pp.3-4", "line 7" or "lines 10-42"."""

    chunk_id: int
    text: str
    path: str
    span: str
    score: float

    def cite(self) -> str:
        """A short source label, e.g. ``nacre.pdf p.3``."""
        return f"{Path(self.path).name} {self.span}"

    def to_dict(self) -> dict:
        return asdict(self)


class Store:
    """Open with :func:`open_store`. Thread-safe for readers; one writer at a time per file."""

    def __init__(self, path: Path, conn, embed_model: str | os.PathLike | None, readonly: bool, device: str | None = "auto"):
        self.path = path
        self.readonly = readonly
        self.device = device
        self._conn = conn
        self._lock = threading.RLock()
        self._embedder: Embedder | None = None
        self._requested = embed_model
        self.knn_settings: KnnSettings | None = None  # index.KnnSettings for the in-process index (None: defaults); set before the first search
        self._knn: VectorIndex | None = None
        self.meta = self._read_meta()
        if embed_model is not None and "embed_model" in self.meta:
            self._check_model(resolve_model(embed_model))

    # ---- metadata -------------------------------------------------------------------------
    def _read_meta(self) -> dict[str, str]:
        try:
            names = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except Exception as err:
            raise StoreError(
                f"{self.path} is not a SQLite database ({err})", hint="pass a store made by `preflexor-local index add`, or a new file name"
            ) from None
        if not names:
            return {}
        if "meta" not in names:
            raise StoreError(
                f"{self.path} is a SQLite database but not a preflexor-local store", hint="pass a store made by `preflexor-local index add`, or a new file name"
            )
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if int(meta.get("schema", SCHEMA)) > SCHEMA:
            raise StoreError(f"{self.path} was written by a newer preflexor-local (schema {meta['schema']})", hint="upgrade preflexor-local")
        return meta

    def _check_model(self, ref: ModelRef) -> None:
        have, fp = self.meta["embed_model"], self.meta.get("embed_fingerprint")
        if ref.name != have:
            raise StoreError(
                f"{self.path} was indexed with the embedding model {have!r} ({self.meta.get('embed_dim')}-d), not {ref.name!r}",
                hint=f"leave --embed-model out to use {have!r}, or index into a new store for {ref.name!r}",
            )
        if fp and ref.ref != self.meta.get("embed_ref") and ref.fingerprint != fp:
            raise StoreError(
                f"the embedding model at {ref.path} is named {have!r} like the store's, but its files differ from the one that built {self.path}",
                hint="use the same model directory that built the store, or index into a new store",
            )

    @property
    def model_name(self) -> str | None:
        return self.meta.get("embed_model")

    @property
    def dim(self) -> int | None:
        return int(self.meta["embed_dim"]) if "embed_dim" in self.meta else None

    @property
    def chunk_settings(self) -> tuple[int, int] | None:
        if "chunk_tokens" not in self.meta:
            return None
        return int(self.meta["chunk_tokens"]), int(self.meta["chunk_overlap"])

    def embedder(self) -> Embedder:
        """The store's embedding model, loaded on first use (seconds), then cached per process."""
        if self._embedder is None:
            if "embed_ref" in self.meta:
                ref = self.meta["embed_ref"]
                if self._requested is not None:
                    ref = self._requested
                elif not ref.startswith("package:") and not Path(ref).is_dir():
                    raise StoreError(
                        f"{self.path} was built with the embedding model at {ref}, which is not there any more",
                        hint=f"pass --embed-model with a copy of {self.meta['embed_model']!r}",
                    )
                self._embedder = load_embedder(ref, self.device)
            else:
                self._embedder = load_embedder(self._requested, self.device)
        return self._embedder

    # ---- transactions ---------------------------------------------------------------------
    @contextmanager
    def read(self):
        """A consistent snapshot for several SELECTs."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                self._conn.execute("COMMIT")

    @contextmanager
    def write(self):
        """One write transaction: everything in it lands, or nothing does."""
        if self.readonly:
            raise StoreError(f"{self.path} is open read-only", hint="open_store(path, readonly=False)")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            if self._knn is not None:
                self._knn.stale = True  # PRAGMA data_version does not count this connection's own commits

    def initialise(self, chunk_tokens: int | None = None, overlap: int | None = None) -> tuple[int, int]:
        """Create the tables and record the model and chunking the first time; check them later."""
        settings = self.chunk_settings
        if settings is not None:
            tokens, over = settings
            if chunk_tokens is not None and chunk_tokens != tokens or overlap is not None and overlap != over:
                raise UsageError(
                    f"{self.path} was chunked with --chunk-tokens {tokens} --overlap {over}; mixing chunk sizes in one store is refused",
                    hint="leave --chunk-tokens/--overlap out to keep the store's, or index into a new store",
                )
            if "store_id" not in self.meta:  # a store from before vec_log: start logging now
                with self.write() as db:
                    self._create_log(db)
                self.meta = self._read_meta()
            return tokens, over
        emb = self.embedder()
        tokens = chunk_tokens or min(DEFAULT_CHUNK_TOKENS, emb.max_tokens - 2)
        over = DEFAULT_OVERLAP if overlap is None else overlap
        if not 8 <= tokens <= emb.max_tokens - 2:
            raise UsageError(
                f"--chunk-tokens must be between 8 and {emb.max_tokens - 2} for {emb.name}, got {tokens}",
                hint=f"{emb.name} reads at most {emb.max_tokens} tokens per chunk",
            )
        if not 0 <= over < tokens // 2:
            raise UsageError(f"--overlap must be between 0 and {tokens // 2 - 1} for chunks of {tokens} tokens, got {over}")
        meta = {
            "schema": str(SCHEMA),
            "embed_model": emb.name,
            "embed_ref": emb.ref.ref,
            "embed_fingerprint": emb.ref.fingerprint,
            "embed_dim": str(emb.dim),
            "chunk_tokens": str(tokens),
            "chunk_overlap": str(over),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        self._create(meta)
        return tokens, over

    def _create(self, meta: dict[str, str]) -> None:
        """Create the tables and record ``meta`` (``embed_dim`` sizes the vectors); bench/ and tests call it without a model."""
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL").fetchall()  # persistent; not allowed inside a transaction
        with self.write() as db:
            for stmt in _TABLES.strip().split(";\n"):
                db.execute(stmt)
            db.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS vectors USING vec0(embedding float[{int(meta['embed_dim'])}] distance_metric=cosine)")
            db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", meta.items())
            self._create_log(db)
        self.meta = self._read_meta()

    @staticmethod
    def _create_log(db) -> None:
        for stmt in _LOG:
            db.execute(stmt)
        db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('store_id', ?)", (uuid.uuid4().hex,))

    # ---- retrieval ------------------------------------------------------------------------
    def _require_index(self) -> None:
        if "embed_dim" not in self.meta:
            raise StoreError(f"{self.path} is empty", hint=f"add documents first: preflexor-local index add FOLDER --store {self.path}")

    def _hits(self, db, rows: list[tuple[int, float]]) -> list[Hit]:
        """Hits for (text id, score) rows; a text shared by several chunks is cited by its first chunk."""
        hits = []
        for text_id, score in rows:
            row = db.execute(
                "SELECT c.id, t.text, d.path, c.span FROM chunks c JOIN texts t ON t.id = c.text_id "
                "JOIN documents d ON d.id = c.doc_id WHERE c.text_id = ? ORDER BY c.id LIMIT 1",
                (text_id,),
            ).fetchone()
            if row is not None:
                hits.append(Hit(row[0], row[1], row[2], row[3], float(score)))
        return hits

    def _index(self) -> VectorIndex:
        """The in-process index, brought up to the store's latest commit (built or loaded on first use)."""
        from .index import VectorIndex

        with self._lock:
            if self._knn is None:
                store_id = self.meta.get("store_id")
                identity = {"store_id": store_id, "embed_model": self.meta.get("embed_model"), "embed_fingerprint": self.meta.get("embed_fingerprint")}
                self._knn = VectorIndex(Path(f"{self.path}.knn") if store_id else None, identity, self.dim, self.knn_settings)
            self._knn.prepare(self.read)
            return self._knn

    def _knn_sqlite(self, db, blob: bytes, k: int) -> list[tuple[int, float]]:
        """sqlite-vec's own exact KNN (brute force inside SQLite): the fallback."""
        rows = db.execute("SELECT rowid, distance FROM vectors WHERE embedding MATCH ? AND k = ? ORDER BY distance", (blob, min(int(k), MAX_K))).fetchall()
        return [(rowid, 1.0 - float(distance)) for rowid, distance in rows]

    def _nearest(self, db, index: VectorIndex, vector, k: int) -> list[tuple[int, float]]:
        """(text id, cosine) of the ``k`` nearest vectors in this snapshot, best first."""
        import numpy as np

        vec = np.frombuffer(vector, np.float32) if isinstance(vector, (bytes, bytearray, memoryview)) else np.asarray(vector, np.float32).reshape(-1)
        if len(vec) != self.dim:
            raise UsageError(f"the query vector has {len(vec)} dimensions; {self.path} holds {self.dim}-d vectors")
        if index.catch_up(db):  # replays what landed since prepare(), in this snapshot
            return index.search(vec, min(int(k), MAX_K))
        return self._knn_sqlite(db, vec.tobytes(), k)

    def search(self, query: str, k: int = 5) -> list[Hit]:
        """The ``k`` chunks most similar to ``query`` (distinct texts), best first."""
        if k < 1 or k > MAX_K:
            raise UsageError(f"-k must be at least 1 and at most {MAX_K}, got {k}", param="k")
        self._require_index()
        vec = self.embedder().encode([query])[0]
        return self.search_vector(vec, k)

    def search_vector(self, vector, k: int = 5) -> list[Hit]:
        self._require_index()
        with self._lock:
            index = self._index()
            with self.read() as db:
                return self._hits(db, self._nearest(db, index, vector, k))

    def sync_index(self) -> dict:
        """Build, load or catch up the in-process index now (``index add`` can call this so the first search is fast)."""
        self._require_index()
        return self._index().describe()

    def random_chunks(self, k: int, seed: int | None = None) -> list[Hit]:
        """``k`` distinct chunks drawn uniformly (reproducible for a given ``seed`` and store); score 0."""
        if k < 1 or "embed_dim" not in self.meta:
            return []
        with self.read() as db:
            ids = [r[0] for r in db.execute("SELECT id FROM texts ORDER BY id")]
            picked = random.Random(seed).sample(ids, min(k, len(ids)))
            return self._hits(db, [(i, 0.0) for i in picked])

    def neighbours(self, chunk_id: int, k: int = 5) -> list[Hit]:
        """The ``k`` chunks nearest to chunk ``chunk_id`` in embedding space (itself excluded)."""
        self._require_index()
        with self._lock:
            index = self._index()
            with self.read() as db:
                row = db.execute("SELECT text_id FROM chunks WHERE id = ?", (int(chunk_id),)).fetchone()
                if row is None:
                    raise UsageError(f"no chunk with id {chunk_id} in {self.path}", hint="take chunk ids from search() or random_chunks()")
                vec = db.execute("SELECT embedding FROM vectors WHERE rowid = ?", (row[0],)).fetchone()[0]
                rows = [r for r in self._nearest(db, index, vec, k + 1) if r[0] != row[0]][:k]
                return self._hits(db, rows)

    def get_chunk(self, chunk_id: int) -> Hit | None:
        with self.read() as db:
            row = db.execute(
                "SELECT c.id, t.text, d.path, c.span FROM chunks c JOIN texts t ON t.id = c.text_id JOIN documents d ON d.id = c.doc_id WHERE c.id = ?",
                (int(chunk_id),),
            ).fetchone()
        return Hit(row[0], row[1], row[2], row[3], 1.0) if row else None

    def documents(self) -> list[dict]:
        if "embed_dim" not in self.meta:
            return []
        with self.read() as db:
            cols = ("id", "path", "content_hash", "size", "mtime", "kind", "n_chunks", "indexed_at")
            return [dict(zip(cols, r)) for r in db.execute(f"SELECT {', '.join(cols)} FROM documents ORDER BY path")]

    def stats(self) -> dict:
        """Counts, model, dimension, chunking, driver and size on disk."""
        out: dict = {"path": str(self.path), "documents": 0, "chunks": 0, "unique_chunks": 0}
        if "embed_dim" in self.meta:
            with self.read() as db:
                out["documents"] = db.execute("SELECT count(*) FROM documents").fetchone()[0]
                out["chunks"] = db.execute("SELECT count(*) FROM chunks").fetchone()[0]
                out["unique_chunks"] = db.execute("SELECT count(*) FROM texts").fetchone()[0]
                out["vec_version"] = db.execute("SELECT vec_version()").fetchone()[0]
            from .index import knn_file_summary

            out["knn"] = self._knn.describe() if self._knn is not None else knn_file_summary(Path(f"{self.path}.knn"))
        out.update(
            embed_model=self.meta.get("embed_model"),
            embed_ref=self.meta.get("embed_ref"),
            dimension=self.dim,
            chunk_tokens=int(self.meta["chunk_tokens"]) if "chunk_tokens" in self.meta else None,
            chunk_overlap=int(self.meta["chunk_overlap"]) if "chunk_overlap" in self.meta else None,
            created=self.meta.get("created"),
            driver=driver_name(),
            size_bytes=sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists()),
        )
        return out

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_store(path: str | os.PathLike, embed_model: str | os.PathLike | None = None, readonly: bool = False, device: str | None = "auto") -> Store:
    """Open (or, unless ``readonly``, create) the store at ``path``.

    ``embed_model``: ``None`` uses the model the store was built with (the default
    MiniLM for a new store); a different model than the store's is refused by name.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise StoreError(f"{path} is a directory, not a store file", hint="pass a file name such as notes.db")
    if not path.exists():
        if readonly:
            raise StoreError(f"no store at {path}", hint=f"build one first: preflexor-local index add FOLDER --store {path}")
        if not path.parent.is_dir():
            raise StoreError(f"the folder for the store {path} does not exist", hint=f"mkdir -p {path.parent}")
    if embed_model is not None:
        resolve_model(embed_model)  # a bad --embed-model fails here, before any file is created
    conn = connect(path, readonly=readonly)
    return Store(path, conn, embed_model, readonly, device)


__all__ = ["DEFAULT_NAME", "Hit", "Store", "StoreError", "open_store"]
