"""Retrieval on a real corpus with the real embedding model: search, random chunks, neighbours, stats, API contract."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from rag_fixtures import QUERIES, make_corpus

from preflexor_local.errors import UsageError
from preflexor_local.rag import Hit, StoreError, open_store


@pytest.fixture(scope="session")
def corpus_store(tmp_path_factory) -> tuple[Path, Path]:
    from preflexor_local.rag import IndexConfig, index_folder

    root = make_corpus(tmp_path_factory.mktemp("corpus"))
    db = tmp_path_factory.mktemp("stores") / "corpus.db"
    report = index_folder([root], db, IndexConfig(progress=False))
    assert report.added == 5 and not report.skipped, report
    return root, db


@pytest.mark.parametrize("query,expected", sorted(QUERIES.items()))
def test_paraphrased_queries_find_the_right_document(corpus_store, query, expected):
    _, db = corpus_store
    with open_store(db, readonly=True) as store:
        hits = store.search(query, k=3)
    assert Path(hits[0].path).name == expected, [(Path(h.path).name, round(h.score, 3)) for h in hits]
    assert hits[0].score > hits[-1].score
    assert all(-1.0 <= h.score <= 1.0 for h in hits)


def test_hit_contract_and_provenance(corpus_store):
    root, db = corpus_store
    assert [f.name for f in dataclasses.fields(Hit)] == ["chunk_id", "text", "path", "span", "score"]
    with open_store(db, readonly=True) as store:
        silk = store.search("beta-sheet nanocrystals in an amorphous glycine matrix", k=1)[0]
        nacre = store.search("brick-and-mortar tablets", k=1)[0]
        html = store.search("Dirac fermions charge mobility", k=1)[0]
    assert silk.path == str(root / "silk.pdf") and silk.span in ("pp.1-2", "p.2")
    assert nacre.path == str(root / "nacre.md") and nacre.span.startswith("lines 1-")
    assert "javascript" not in html.text and "Graphene is a single sheet" in html.text
    assert html.span.startswith("line")  # source lines of the HTML file
    assert isinstance(silk.chunk_id, int) and silk.cite().startswith("silk.pdf ")
    assert set(silk.to_dict()) == {"chunk_id", "text", "path", "span", "score"}


def test_random_chunks_are_seeded_and_distinct(corpus_store):
    _, db = corpus_store
    with open_store(db, readonly=True) as store:
        a = store.random_chunks(3, seed=7)
        b = store.random_chunks(3, seed=7)
        everything = store.random_chunks(100, seed=1)
        n = store.stats()["unique_chunks"]
    assert [h.chunk_id for h in a] == [h.chunk_id for h in b]
    assert len({h.chunk_id for h in a}) == 3
    assert len(everything) == n and len({h.text for h in everything}) == n
    seeds = {tuple(h.chunk_id for h in open_store(db, readonly=True).random_chunks(3, seed=s)) for s in range(6)}
    assert len(seeds) > 1  # the seed matters


def test_neighbours_walk_the_embedding_space(corpus_store):
    _, db = corpus_store
    with open_store(db, readonly=True) as store:
        start = store.search("spider silk energy absorption", k=1)[0]
        near = store.neighbours(start.chunk_id, k=3)
        assert start.chunk_id not in [h.chunk_id for h in near] and len(near) == 3
        assert near == sorted(near, key=lambda h: -h.score)
        # the same order as numpy brute force over every chunk's embedding
        everything = store.random_chunks(1000, seed=0)
        vecs = store.embedder().encode([h.text for h in everything])
        me = vecs[[h.chunk_id for h in everything].index(start.chunk_id)]
        ranked = [h.chunk_id for _, h in sorted(zip(-(vecs @ me), everything), key=lambda t: t[0]) if h.chunk_id != start.chunk_id]
        assert [h.chunk_id for h in near] == ranked[:3]
        assert near[0].score == pytest.approx(float(vecs[[h.chunk_id for h in everything].index(near[0].chunk_id)] @ me), abs=1e-4)
        with pytest.raises(UsageError, match="no chunk with id 99999"):
            store.neighbours(99999)
        assert store.get_chunk(start.chunk_id).text == start.text


def test_stats_report_model_dimension_and_size(corpus_store):
    _, db = corpus_store
    with open_store(db, readonly=True) as store:
        st = store.stats()
    assert st["documents"] == 5 and st["chunks"] >= 5
    assert st["embed_model"] == "all-MiniLM-L6-v2" and st["dimension"] == 384
    assert st["chunk_tokens"] == 200 and st["chunk_overlap"] == 32
    assert st["size_bytes"] > 0 and st["vec_version"].startswith("v")


def test_readonly_store_refuses_writes_and_missing_store_is_an_error(corpus_store, tmp_path):
    _, db = corpus_store
    with open_store(db, readonly=True) as store, pytest.raises(StoreError, match="read-only"):
        with store.write():
            pass
    with pytest.raises(StoreError, match="no store at") as err:
        open_store(tmp_path / "missing.db", readonly=True)
    assert "index add" in err.value.hint
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("hello, I am a text file")
    with pytest.raises(StoreError, match="not a SQLite database"):
        open_store(not_a_db)
    with pytest.raises(StoreError, match="is a directory"):
        open_store(tmp_path)


def test_other_sqlite_file_is_refused(tmp_path):
    import sqlean

    other = tmp_path / "other.db"
    conn = sqlean.connect(other)
    conn.execute("CREATE TABLE t(x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a preflexor-local store"):
        open_store(other)


def test_driver_fallback_and_the_no_driver_message(monkeypatch):
    import sqlite3

    from preflexor_local.errors import BackendUnavailableError
    from preflexor_local.rag import db as dbmod

    chosen = dbmod.driver()
    stdlib_ok = dbmod._can_load(sqlite3)
    assert chosen.__name__ == ("sqlite3" if stdlib_ok else "sqlean")
    if not stdlib_ok:  # this machine: the stdlib cannot load extensions, so forcing it must fail with what to install
        with pytest.raises(BackendUnavailableError, match="can load the sqlite-vec extension") as err:
            dbmod.driver("sqlite3")
        assert "sqlean.py" in err.value.hint
    with pytest.raises(BackendUnavailableError, match="unknown SQLite driver"):
        dbmod.driver("postgres")
