"""``--rag builtin:grounded``: the shipped corpus is indexed into a cached store on first use, one passage a chunk."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest

from preflexor_local.errors import UsageError
from preflexor_local.eval.corpus import load_corpus
from preflexor_local.rag.evidence import Evidence, open_rag


@pytest.mark.slow
def test_the_builtin_corpus_becomes_a_cached_store_whose_passages_are_found(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PREFLEXOR_HOME", str(tmp_path))
    corpus = {p["id"]: p for p in load_corpus("grounded")}
    store = open_rag("builtin:grounded")
    try:
        assert "indexing the built-in grounded corpus" in capsys.readouterr().err
        first = next(iter(corpus.values()))
        hits = Evidence(store, k=2)(first["text"][:200], "")
        assert hits[0]["source"].startswith(f"{first['id']}.md") and first["text"].strip() in hits[0]["text"]
        assert len(list((tmp_path / "stores").glob("grounded-*.db"))) == 1
    finally:
        store.close()
    again = open_rag("builtin:grounded")  # cached: no second build
    again.close()
    assert "indexing" not in capsys.readouterr().err


def _first_use(home: str, start, failures) -> None:
    import os

    os.environ["PREFLEXOR_HOME"] = home
    from preflexor_local.rag.evidence import builtin_store

    start.wait()
    try:
        builtin_store("grounded")
    except Exception as e:  # reported to the test, which names it
        failures.put(f"{type(e).__name__}: {e}")


@pytest.mark.slow
def test_two_processes_using_the_builtin_store_first_at_once_both_get_it_whole(tmp_path):
    """Two evals started together (as the benchmarks run them) once shared the build's temporary name: one died
    with 'UNIQUE constraint failed: documents.path'."""
    ctx = multiprocessing.get_context("spawn")
    start, failures = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_first_use, args=(str(tmp_path), start, failures)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    assert failures.empty(), failures.get()
    [store] = (tmp_path / "stores").glob("grounded-*.db")
    with sqlite3.connect(store) as db:
        assert db.execute("select count(*) from documents").fetchone()[0] == len(load_corpus("grounded"))
    assert not list(tmp_path.rglob("*.part*")), "a build left its temporary files behind"


def test_an_unknown_builtin_or_a_missing_store_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFLEXOR_HOME", str(tmp_path))
    with pytest.raises(UsageError, match="no built-in corpus named 'nope'"):
        open_rag("builtin:nope")
    with pytest.raises(UsageError, match="RAG store not found: missing.db"):
        open_rag("missing.db")


def test_eval_of_a_set_with_a_corpus_is_grounded_in_it_unless_told_otherwise():
    from preflexor_local.commands.eval import _default_store
    from preflexor_local.config import Retrieval

    assert _default_store("builtin:grounded", Retrieval(), quiet=True).rag == "builtin:grounded"
    assert _default_store("builtin:grounded", Retrieval(rag="none"), quiet=True).rag is None
    assert _default_store("builtin:grounded", Retrieval(rag="mine.db"), quiet=True).rag == "mine.db"
    assert _default_store("builtin:materials", Retrieval(), quiet=True).rag is None  # no corpus ships with it
