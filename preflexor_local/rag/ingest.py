"""Indexing folders into a store: walk, extract, chunk, dedupe, embed, commit.

Work is committed in batches of whole documents (``commit_every`` new chunks per
transaction), so killing the indexer loses at most one batch and a re-run picks
up where it stopped: files whose size and mtime match the store are skipped
unread, files whose bytes hash the same are only touched, changed files are
replaced atomically, and deleted files under the given folders are removed.
Each distinct chunk text (by whitespace-insensitive hash) is embedded once,
however many files contain it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import Settings, opt
from ..errors import UsageError
from .chunking import Chunk, chunk_text
from .extract import SkipFile, extract, kind_of
from .store import Store, open_store

Warn = Callable[[str, str], None]


@dataclass
class IndexConfig(Settings):
    embed_model: str | None = opt(
        None, "Local sentence-transformers directory for embeddings (default: the packaged all-MiniLM-L6-v2; a store keeps its model).", "--embed-model"
    )
    chunk_tokens: int | None = opt(
        None, "Tokens per chunk, counted by the embedding model's tokenizer (default 200; a store keeps its first value).", "--chunk-tokens", ge=16, le=8192
    )
    overlap: int | None = opt(None, "Tokens shared by consecutive chunks (default 32).", "--overlap", ge=0)
    batch_size: int = opt(64, "Chunks per embedding batch.", "--batch-size", ge=1)
    commit_every: int = opt(256, "New chunks per transaction; a crash loses at most this much work.", "--commit-every", ge=1)
    device: str = opt("auto", "Embedding device: auto (CUDA, then MPS, then CPU), cuda, mps or cpu.", "--device", choices=("auto", "cuda", "mps", "cpu"))
    follow_symlinks: bool = opt(True, "Follow symbolic links to folders (loops are detected and skipped).", "--follow-symlinks/--no-follow-symlinks")
    progress: bool = True


@dataclass
class IndexReport:
    store: str
    files: int = 0  # candidate files found
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    ignored: int = 0  # files with extensions we do not index
    chunks_added: int = 0
    embedded: int = 0  # distinct new chunk texts embedded
    reused: int = 0  # chunks whose text was already embedded (dedupe)
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    knn: dict = field(default_factory=dict)  # the in-process search index after this run (``Store.sync_index``)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["skipped"] = [{"path": p, "reason": r} for p, r in self.skipped]
        return d

    def summary(self) -> str:
        rate = self.chunks_added / self.seconds if self.seconds else 0.0
        return (
            f"{self.added} added, {self.updated} updated, {self.unchanged} unchanged, {self.removed} removed, "
            f"{len(self.skipped)} skipped; {self.chunks_added} chunks ({self.embedded} embedded, {self.reused} deduplicated) "
            f"in {self.seconds:.1f} s ({rate:.0f} chunks/s)"
        )


@dataclass
class _Doc:
    path: str
    kind: str
    content_hash: str
    size: int
    mtime: float
    chunks: list[Chunk]
    old_id: int | None


def _stderr_warning(path: str, reason: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"skipped {path}: {reason}", file=sys.stderr)


def _reason(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "symlink loop"
    if err.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return err.strerror or str(err)


def iter_files(roots: Iterable[Path], follow_symlinks: bool, warn: Warn, ignored: list[int]) -> Iterator[tuple[str, str]]:
    """(absolute path, kind) of every indexable file under ``roots``, sorted, each real folder once.

    Symbolic links to folders are followed after all real folders, so a file is stored under its real
    location when both are given; a link back into its own ancestry is a loop and is reported.
    """
    visited: set[tuple[int, int]] = set()
    deferred: list[Path] = []

    def walk(folder: Path, via_link: bool = False) -> Iterator[tuple[str, str]]:
        try:
            st = folder.stat()
        except OSError as err:
            warn(str(folder), _reason(err))
            return
        if (st.st_dev, st.st_ino) in visited:
            real, parent = os.path.realpath(folder), os.path.realpath(folder.parent)
            if via_link and (parent == real or parent.startswith(real.rstrip(os.sep) + os.sep)):
                warn(str(folder), "symlink loop (links to a folder that contains it)")
            return  # otherwise: already indexed under another name
        visited.add((st.st_dev, st.st_ino))
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            warn(str(folder), f"unreadable folder ({_reason(err)})")
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                if entry.is_dir(follow_symlinks=False):
                    yield from walk(path)
                    continue
                if entry.is_symlink():
                    path.stat()  # raises on symlink loops and dangling links
                    if path.is_dir():
                        if follow_symlinks:
                            deferred.append(path)
                        continue
                if not entry.is_file(follow_symlinks=True):
                    continue
            except OSError as err:
                warn(str(path), _reason(err))
                continue
            kind = kind_of(path)
            if kind is None:
                ignored[0] += 1
                continue
            yield str(path), kind

    for root in roots:
        if root.is_dir():
            yield from walk(root)
        else:
            yield str(root), kind_of(root) or "text"  # named explicitly: try it as text
    while deferred:
        yield from walk(deferred.pop(0), via_link=True)


def _check_roots(paths: Iterable[str | os.PathLike]) -> list[Path]:
    roots = []
    for p in paths:
        path = Path(os.path.abspath(Path(p).expanduser()))
        if not path.exists():
            try:
                path.stat()
            except OSError as err:
                if err.errno == errno.ELOOP:
                    raise UsageError(f"{p} is a symlink loop", hint="point at a real file or folder") from None
            raise UsageError(f"no such file or folder: {p}", hint="check the path")
        roots.append(path)
    if not roots:
        raise UsageError("nothing to index", hint="pass one or more files or folders")
    return roots


def _in_roots(path: str, roots: list[Path]) -> bool:
    for root in roots:
        r = str(root)
        if path == r or path.startswith(r.rstrip(os.sep) + os.sep):
            return True
    return False


def _delete_docs(db, doc_ids: list[int]) -> list[int]:
    """Delete documents and their chunks; return the text ids they referenced (collect garbage later)."""
    text_ids: set[int] = set()
    for doc_id in doc_ids:
        text_ids.update(r[0] for r in db.execute("SELECT text_id FROM chunks WHERE doc_id = ?", (doc_id,)))
        db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc_id,))
        db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
    return sorted(text_ids)


def _collect_garbage(db, text_ids: Iterable[int]) -> int:
    orphans = [(t,) for t in text_ids if db.execute("SELECT 1 FROM chunks WHERE text_id = ? LIMIT 1", (t,)).fetchone() is None]
    db.executemany("DELETE FROM vectors WHERE rowid = ?", orphans)
    db.executemany("DELETE FROM texts WHERE id = ?", orphans)
    return len(orphans)


class _Writer:
    """Buffers whole documents and commits them, embedded, in one transaction per batch."""

    def __init__(self, store: Store, config: IndexConfig, report: IndexReport):
        self.store, self.config, self.report = store, config, report
        self.embedder = store.embedder()
        self.docs: list[_Doc] = []
        self.touch: list[tuple[int, float, int]] = []
        self.pending_chunks = 0

    def add(self, doc: _Doc) -> None:
        self.docs.append(doc)
        self.pending_chunks += len(doc.chunks)
        if self.pending_chunks >= self.config.commit_every:
            self.flush()

    def flush(self) -> None:
        if not self.docs and not self.touch:
            return
        text_of: dict[str, str] = {}
        for doc in self.docs:
            for c in doc.chunks:
                text_of.setdefault(c.hash, c.text)
        known = self._known(list(text_of))
        need = [h for h in text_of if h not in known]
        vectors = self.embedder.encode([text_of[h] for h in need], batch_size=self.config.batch_size)
        with self.store.write() as db:
            db.executemany("UPDATE documents SET size = ?, mtime = ? WHERE id = ?", self.touch)
            ids: dict[str, int] = {}
            lost = [h for h, i in known.items() if db.execute("SELECT 1 FROM texts WHERE id = ?", (i,)).fetchone() is None]
            if lost:  # another writer removed them since we looked: embed them now (rare)
                need = need + lost
                vectors = list(vectors) + list(self.embedder.encode([text_of[h] for h in lost], batch_size=self.config.batch_size))
            ids.update((h, i) for h, i in known.items() if h not in lost)
            new_vectors = []
            for h, vec in zip(need, vectors):
                row = db.execute("INSERT INTO texts(hash, text) VALUES (?, ?) ON CONFLICT(hash) DO NOTHING RETURNING id", (h, text_of[h])).fetchone()
                if row is None:  # another writer added it meanwhile
                    ids[h] = db.execute("SELECT id FROM texts WHERE hash = ?", (h,)).fetchone()[0]
                else:
                    ids[h] = row[0]
                    new_vectors.append((row[0], vec.tobytes()))
            db.executemany("INSERT INTO vectors(rowid, embedding) VALUES (?, ?)", new_vectors)
            old_texts = _delete_docs(db, [d.old_id for d in self.docs if d.old_id is not None])
            now = time.time()
            for doc in self.docs:
                doc_id = db.execute(
                    "INSERT INTO documents(path, content_hash, size, mtime, kind, n_chunks, indexed_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (doc.path, doc.content_hash, doc.size, doc.mtime, doc.kind, len(doc.chunks), now),
                ).fetchone()[0]
                db.executemany(
                    "INSERT INTO chunks(doc_id, seq, text_id, span, start_char, end_char) VALUES (?, ?, ?, ?, ?, ?)",
                    [(doc_id, i, ids[c.hash], c.span, c.start, c.end) for i, c in enumerate(doc.chunks)],
                )
            _collect_garbage(db, old_texts)
        n_chunks = sum(len(d.chunks) for d in self.docs)
        self.report.chunks_added += n_chunks
        self.report.embedded += len(new_vectors)
        self.report.reused += n_chunks - len(new_vectors)
        self.docs, self.touch, self.pending_chunks = [], [], 0

    def _known(self, hashes: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        with self.store.read() as db:
            for i in range(0, len(hashes), 500):
                part = hashes[i : i + 500]
                marks = ",".join("?" * len(part))
                out.update(db.execute(f"SELECT hash, id FROM texts WHERE hash IN ({marks})", part).fetchall())
        return out


def index_folder(
    paths: Iterable[str | os.PathLike] | str | os.PathLike, store_path: str | os.PathLike, config: IndexConfig | None = None, on_warning: Warn | None = None
) -> IndexReport:
    """Index files and folders (recursively) into the store at ``store_path``; resumable and incremental."""
    config = config or IndexConfig()
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if config.batch_size < 1 or config.commit_every < 1:
        raise UsageError("--batch-size and --commit-every must be at least 1")
    roots = _check_roots(paths)
    report = IndexReport(store=str(store_path))
    warn_out = on_warning or _stderr_warning

    def warn(path: str, reason: str) -> None:
        report.skipped.append((path, reason))
        warn_out(path, reason)

    t0 = time.perf_counter()
    store = open_store(store_path, embed_model=config.embed_model, device=config.device)
    try:
        tokens, overlap = store.initialise(config.chunk_tokens, config.overlap)
        ignored = [0]
        files = list(dict.fromkeys(iter_files(roots, config.follow_symlinks, warn, ignored)))
        report.files, report.ignored = len(files), ignored[0]
        with store.read() as db:
            existing = {r[0]: r[1:] for r in db.execute("SELECT path, id, size, mtime, content_hash FROM documents")}
        writer = _Writer(store, config, report)
        seen: set[str] = set()
        from tqdm import tqdm

        t_files = time.perf_counter()
        bar = tqdm(total=len(files), unit="file", disable=not config.progress, file=sys.stderr, dynamic_ncols=True, desc="indexing")
        try:
            for path, kind in files:
                seen.add(path)
                bar.update(1)
                old = existing.get(path)
                try:
                    st = os.stat(path)
                    if old is not None and old[1] == st.st_size and old[2] == st.st_mtime:
                        report.unchanged += 1
                        continue
                    with open(path, "rb") as fh:
                        data = fh.read()
                except OSError as err:
                    warn(path, _reason(err))
                    continue
                digest = hashlib.sha256(data).hexdigest()
                if old is not None and old[3] == digest:
                    writer.touch.append((st.st_size, st.st_mtime, old[0]))
                    report.unchanged += 1
                    continue
                try:
                    ex = extract(Path(path), data, kind)
                except SkipFile as err:
                    warn(path, str(err))
                    continue
                chunks = chunk_text(ex, writer.embedder.token_offsets, tokens, overlap)
                if not chunks:
                    warn(path, "no text to index")
                    continue
                writer.add(_Doc(path, kind, digest, st.st_size, st.st_mtime, chunks, old[0] if old else None))
                if old is None:
                    report.added += 1
                else:
                    report.updated += 1
                elapsed = max(time.perf_counter() - t_files, 1e-6)
                bar.set_postfix_str(f"{report.chunks_added} chunks, {report.chunks_added / elapsed:.0f} chunks/s", refresh=False)
            writer.flush()
            gone = [old[0] for p, old in existing.items() if p not in seen and _in_roots(p, roots) and not os.path.lexists(p)]
            if gone:
                with store.write() as db:
                    _collect_garbage(db, _delete_docs(db, gone))
                report.removed = len(gone)
        finally:
            bar.close()
        if (report.added or report.updated or report.removed) and "embed_dim" in store.meta:
            # Bring the search index up to date now, so the first search after a big ingest does not pay for it.
            report.knn = store.sync_index()
    finally:
        store.close()
    report.seconds = time.perf_counter() - t0
    return report


def remove_paths(store_path: str | os.PathLike, paths: Iterable[str | os.PathLike]) -> list[str]:
    """Remove documents (a file, or everything under a folder) from the store; returns the removed paths."""
    store = open_store(store_path)
    try:
        if store.model_name is None:
            raise UsageError(f"{store_path} has no documents", hint="nothing to remove")
        removed: list[str] = []
        with store.write() as db:
            for p in paths:
                target = os.path.abspath(Path(p).expanduser())
                prefix = target.rstrip(os.sep) + os.sep
                rows = db.execute("SELECT id, path FROM documents WHERE path = ? OR substr(path, 1, ?) = ?", (target, len(prefix), prefix)).fetchall()
                if not rows:
                    raise UsageError(f"{p} is not in the store {store_path}", hint="`preflexor-local index stats --store ... --json` lists what is indexed")
                _collect_garbage(db, _delete_docs(db, [r[0] for r in rows]))
                removed.extend(r[1] for r in rows)
        return removed
    finally:
        store.close()
