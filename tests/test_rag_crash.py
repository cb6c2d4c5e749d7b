"""Crash safety and concurrency: SIGKILL a real `index add` repeatedly while a reader searches the same store.

After every kill the store must open cleanly and hold only whole documents;
re-running the same command must complete the index without duplicates.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rag_fixtures import make_many

from preflexor_local.rag import IndexConfig, index_folder, open_store
from preflexor_local.rag.chunking import chunk_text
from preflexor_local.rag.embed import load_embedder
from preflexor_local.rag.extract import extract

N_FILES = 40
TOKENS, OVERLAP = 40, 8  # small chunks: several per document, cheap to embed


def _start(docs: Path, db: Path, home: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PREFLEXOR_HOME": str(home)}
    cmd = [
        sys.executable,
        "-m",
        "preflexor_local",
        "index",
        "add",
        str(docs),
        "--store",
        str(db),
        "--commit-every",
        "12",
        "--batch-size",
        "16",
        "--chunk-tokens",
        str(TOKENS),
        "--overlap",
        str(OVERLAP),
        "--quiet",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _expected_chunks(docs: Path) -> dict[str, list[str]]:
    emb = load_embedder()
    out = {}
    for path in sorted(docs.iterdir()):
        out[str(path)] = [c.text for c in chunk_text(extract(path, path.read_bytes()), emb.token_offsets, TOKENS, OVERLAP)]
    return out


def _check_whole_documents(db: Path, expected: dict[str, list[str]]) -> int:
    with open_store(db) as store:  # read-write open: recovers the WAL a killed writer left
        if store.model_name is None:
            return 0
        with store.read() as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            docs = conn.execute("SELECT id, path, n_chunks FROM documents").fetchall()
            for doc_id, path, n_chunks in docs:
                texts = [
                    r[0] for r in conn.execute("SELECT t.text FROM chunks c JOIN texts t ON t.id = c.text_id WHERE c.doc_id = ? ORDER BY c.seq", (doc_id,))
                ]
                assert texts == expected[path], f"{path} is not whole: {len(texts)} of {len(expected[path])} chunks"
                assert n_chunks == len(texts)
            text_ids = {r[0] for r in conn.execute("SELECT id FROM texts")}
            vector_ids = {r[0] for r in conn.execute("SELECT rowid FROM vectors")}
            used_ids = {r[0] for r in conn.execute("SELECT DISTINCT text_id FROM chunks")}
            assert text_ids == vector_ids == used_ids  # every text embedded once, none orphaned, none missing
            assert conn.execute("SELECT count(*) FROM (SELECT hash FROM texts GROUP BY hash HAVING count(*) > 1)").fetchone()[0] == 0
        return len(docs)


@pytest.mark.slow
def test_sigkill_during_index_add_leaves_whole_documents_and_rerun_completes(tmp_path):
    docs = make_many(tmp_path / "docs", N_FILES, seed=3, words_per_file=60)
    db = tmp_path / "store.db"
    expected = _expected_chunks(docs)
    assert sum(len(v) for v in expected.values()) > 2 * N_FILES  # several transactions' worth of work
    rng = random.Random(11)
    reader = None
    killed_midway = 0
    searches = 0
    done = 0
    for step in (4, 16):  # two kills at random points of the write phase, then a full re-run
        proc = _start(docs, db, tmp_path / "home")
        target = done + step
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if reader is None and db.exists():
                try:
                    candidate = open_store(db, readonly=True)
                except Exception:
                    candidate = None
                if candidate is not None and candidate.model_name is not None:
                    reader = candidate
                elif candidate is not None:
                    candidate.close()
            if reader is not None:
                count = reader.stats()["documents"]  # a reader works while the indexer writes (WAL)
                if count and searches < 8:
                    hits = reader.search("fracture toughness of a composite hierarchy", k=3)
                    assert hits and all(Path(h.path).parent == docs for h in hits)
                    searches += 1
                if count >= target:
                    time.sleep(rng.uniform(0.0, 0.25))  # land anywhere in the next batch
                    break
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read()
        done = _check_whole_documents(db, expected)
        if proc.returncode == -signal.SIGKILL and done < N_FILES:
            killed_midway += 1
    assert killed_midway == 2, "the indexer finished before it could be killed; make the corpus bigger"
    assert searches > 0

    proc = _start(docs, db, tmp_path / "home")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert _check_whole_documents(db, expected) == N_FILES
    # no duplicates anywhere, and the same command once more finds nothing to do
    again = index_folder([docs], db, IndexConfig(progress=False))
    assert (again.added, again.updated, again.removed, again.unchanged, again.embedded) == (0, 0, 0, N_FILES, 0)
    with open_store(db, readonly=True) as store:
        st = store.stats()
    distinct = {" ".join(t.split()) for texts in expected.values() for t in texts}
    assert st["documents"] == N_FILES and st["chunks"] == sum(len(v) for v in expected.values()) and st["unique_chunks"] == len(distinct)
    reader.close()
