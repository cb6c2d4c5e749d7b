"""Ingest on real files: chunking, incremental re-index, dedupe, removal, bad files, model and chunking mismatches."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from rag_fixtures import BONE, make_bad_files, make_many

from preflexor_local.errors import ModelNotFoundError, UsageError
from preflexor_local.rag import IndexConfig, StoreError, index_folder, open_store, remove_paths
from preflexor_local.rag.chunking import chunk_text
from preflexor_local.rag.embed import load_embedder, resolve_model
from preflexor_local.rag.extract import extract

QUIET = IndexConfig(progress=False)


@pytest.fixture(scope="session")
def embedder():
    return load_embedder()


def _quiet(path, reason):
    pass


def _counts(db: Path) -> dict:
    with open_store(db, readonly=True) as store, store.read() as conn:
        q = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        return {
            "documents": q("SELECT count(*) FROM documents"),
            "chunks": q("SELECT count(*) FROM chunks"),
            "texts": q("SELECT count(*) FROM texts"),
            "vectors": q("SELECT count(*) FROM vectors"),
            "orphans": q("SELECT count(*) FROM texts t WHERE NOT EXISTS (SELECT 1 FROM chunks c WHERE c.text_id = t.id)"),
        }


def test_chunks_respect_the_token_budget_overlap_and_line_spans(embedder, tmp_path):
    paragraphs = [
        f"Paragraph {i} line one about {w} composites and fracture.\nIt continues on a second line with more words about {w}."
        for i, w in enumerate(["silk", "bone", "nacre", "wood", "chitin", "enamel"] * 6)
    ]
    text = "\n\n".join(paragraphs) + "\n"
    path = tmp_path / "long.md"
    path.write_text(text)
    ex = extract(path, path.read_bytes())
    chunks = chunk_text(ex, embedder.token_offsets, size=60, overlap=10)
    assert len(chunks) > 5
    lines = text.split("\n")
    for c in chunks:
        assert len(embedder.token_offsets(c.text)) <= 60
        first, _, last = c.span.removeprefix("lines ").partition("-")
        assert lines[int(first) - 1].strip().endswith(c.text.split("\n")[0])  # the span names the real source lines
        assert lines[int(last or first) - 1].strip().startswith(c.text.split("\n")[-1])
    for a, b in zip(chunks, chunks[1:]):
        assert b.start < a.end  # consecutive windows overlap
        assert b.text[0].isupper()  # ... starting at a sentence, not mid-word
    # the first window ends at a paragraph break, not in the middle of a sentence
    assert chunks[0].text.endswith(".")


def test_incremental_reindex_touch_change_add_delete(tmp_path):
    docs = tmp_path / "docs"
    make_many(docs, 6, seed=1, words_per_file=120)
    db = tmp_path / "s.db"
    first = index_folder([docs], db, QUIET)
    assert (first.added, first.unchanged, first.reused) == (6, 0, 0)
    assert first.knn["kind"] == "flat" and first.knn["vectors"] == _counts(db)["vectors"] and first.knn["pending"] == 0  # ready for the first search
    again = index_folder([docs], db, QUIET)
    assert (again.added, again.updated, again.unchanged, again.embedded) == (0, 0, 6, 0)
    assert again.knn == {}  # nothing changed: the index is left alone

    os.utime(docs / "doc000.md", (1, 1))  # new mtime, same bytes: hashed, not re-embedded
    (docs / "doc001.md").write_text("Completely new text about titanium oxide passivation layers.\n")
    (docs / "doc002.md").unlink()
    (docs / "new.txt").write_text(BONE)
    third = index_folder([docs], db, QUIET)
    assert (third.added, third.updated, third.unchanged, third.removed) == (1, 1, 4, 1)
    assert third.knn["vectors"] == _counts(db)["vectors"] and third.knn["pending"] == 0
    assert third.embedded == 2
    with open_store(db, readonly=True) as store:
        paths = {Path(d["path"]).name for d in store.documents()}
        assert paths == {"doc000.md", "doc001.md", "doc003.md", "doc004.md", "doc005.md", "new.txt"}
        assert "titanium" in store.search("titanium passivation", k=1)[0].text
    c = _counts(db)
    assert c["orphans"] == 0 and c["texts"] == c["vectors"]
    fourth = index_folder([docs], db, QUIET)
    assert (fourth.added, fourth.updated, fourth.removed, fourth.unchanged) == (0, 0, 0, 6)


def test_same_text_in_two_files_is_embedded_once_and_removal_collects_garbage(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(BONE)
    (docs / "b.md").write_text(BONE.replace("\n", "\n   "))  # same words, different whitespace
    (docs / "c.txt").write_text("Wood is a cellular composite of cellulose fibrils in lignin.\n")
    db = tmp_path / "s.db"
    report = index_folder([docs], db, QUIET)
    assert report.chunks_added == 3 and report.embedded == 2 and report.reused == 1
    c = _counts(db)
    assert (c["documents"], c["chunks"], c["texts"], c["vectors"]) == (3, 3, 2, 2)
    with open_store(db, readonly=True) as store:
        hits = store.search("bone remodelling by osteoclasts", k=5)
        assert len(hits) == 2  # one hit per distinct text, not one per file

    assert remove_paths(db, [docs / "a.txt"]) == [str(docs / "a.txt")]
    c = _counts(db)
    assert (c["documents"], c["texts"], c["vectors"]) == (2, 2, 2)  # b.md still uses the text
    removed = remove_paths(db, [docs])
    assert sorted(Path(p).name for p in removed) == ["b.md", "c.txt"]
    c = _counts(db)
    assert (c["documents"], c["chunks"], c["texts"], c["vectors"]) == (0, 0, 0, 0)
    with pytest.raises(UsageError, match="not in the store"):
        remove_paths(db, [docs / "a.txt"])


def test_bad_files_are_skipped_with_a_reason_and_never_abort(tmp_path):
    bad = tmp_path / "bad"
    expected = make_bad_files(bad)
    if os.geteuid() == 0:  # root reads mode-000 files; the CLI test drops that privilege to cover it
        expected.pop("secret.txt")
        (bad / "secret.txt").unlink()
    warnings: list[tuple[str, str]] = []
    report = index_folder([bad], tmp_path / "s.db", QUIET, on_warning=lambda p, r: warnings.append((p, r)))
    assert report.added == 1 and report.ignored == 1
    got = {Path(p).name: r for p, r in report.skipped}
    assert set(got) == set(expected), got
    for name, word in expected.items():
        assert word.lower() in got[name].lower(), (name, got[name])
        assert "\n" not in got[name]
    assert warnings == report.skipped
    with open_store(tmp_path / "s.db", readonly=True) as store:
        assert [Path(d["path"]).name for d in store.documents()] == ["good.txt"]


def test_a_password_free_encrypted_pdf_is_read(tmp_path):
    from rag_fixtures import make_pdf

    path = make_pdf(tmp_path / "open.pdf", ["first page about keratin", "second page about chitin"], password="")
    ex = extract(path, path.read_bytes())
    assert "keratin" in ex.text and ex.span(ex.text.index("chitin"), ex.text.index("chitin") + 6) == "p.2"


def _model_copy(tmp_path: Path, name: str, drop: str | None = None) -> Path:
    src = resolve_model(None).path
    dst = tmp_path / name
    shutil.copytree(src, dst, copy_function=os.symlink, ignore=lambda d, names: [drop] if drop in names else [])
    return dst


def test_embedding_model_mismatch_is_refused_by_name(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(BONE)
    db = tmp_path / "s.db"
    index_folder([docs], db, QUIET)
    other = _model_copy(tmp_path, "other-minilm")
    with pytest.raises(StoreError, match="indexed with the embedding model 'all-MiniLM-L6-v2'.*not 'other-minilm'") as err:
        open_store(db, embed_model=other)
    assert "new store" in err.value.hint
    with pytest.raises(StoreError, match="other-minilm"):
        index_folder([docs], db, IndexConfig(embed_model=str(other), progress=False))
    impostor = _model_copy(tmp_path, "all-MiniLM-L6-v2", drop="README.md")
    with pytest.raises(StoreError, match="files differ"):
        open_store(db, embed_model=impostor)
    with pytest.raises(ModelNotFoundError, match="not a local directory"):
        open_store(db, embed_model=tmp_path / "nope")
    with pytest.raises(UsageError, match="chunked with --chunk-tokens 200"):
        index_folder([docs], db, IndexConfig(chunk_tokens=100, progress=False))


def test_a_custom_local_model_directory_is_recorded_and_reused(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(BONE)
    other = _model_copy(tmp_path, "other-minilm")
    db = tmp_path / "s.db"
    report = index_folder([docs], db, IndexConfig(embed_model=str(other), chunk_tokens=64, overlap=8, progress=False))
    assert report.added == 1
    with open_store(db, readonly=True) as store:  # no embed_model: the store's own is found and loaded
        st = store.stats()
        assert (st["embed_model"], st["dimension"], st["chunk_tokens"], st["chunk_overlap"]) == ("other-minilm", 384, 64, 8)
        assert store.search("osteoblasts and collagen", k=1)[0].path == str(docs / "a.txt")
    with pytest.raises(StoreError, match="all-MiniLM-L6-v2"):
        index_folder([docs], db, IndexConfig(embed_model="default", progress=False))


def test_bad_arguments(tmp_path):
    with pytest.raises(UsageError, match="no such file or folder"):
        index_folder([tmp_path / "missing"], tmp_path / "s.db", QUIET)
    with pytest.raises(UsageError, match="--chunk-tokens must be between"):
        index_folder([tmp_path], tmp_path / "s.db", IndexConfig(chunk_tokens=5000, progress=False))
    with pytest.raises(StoreError, match="folder for the store"):
        index_folder([tmp_path], tmp_path / "no" / "s.db", QUIET)


def test_symlinked_folders_are_followed_once_under_their_real_name(tmp_path):
    docs = tmp_path / "docs"
    (docs / "real").mkdir(parents=True)
    (docs / "real" / "bone.txt").write_text(BONE)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "wood.md").write_text("Wood is a cellular composite of cellulose fibrils in lignin.\n")
    os.symlink(docs / "real", docs / "a_link_to_real")  # sorts first, but the real path wins
    os.symlink(outside, docs / "ext")
    os.symlink(docs, docs / "real" / "up")  # a loop back to an ancestor
    warnings: list[tuple[str, str]] = []
    report = index_folder([docs], tmp_path / "s.db", QUIET, on_warning=lambda p, r: warnings.append((p, r)))
    with open_store(tmp_path / "s.db", readonly=True) as store:
        assert sorted(d["path"] for d in store.documents()) == [str(docs / "ext" / "wood.md"), str(docs / "real" / "bone.txt")]
    assert report.skipped == [(str(docs / "real" / "up"), "symlink loop (links to a folder that contains it)")]
    report = index_folder([docs], tmp_path / "t.db", IndexConfig(follow_symlinks=False, progress=False), on_warning=_quiet)
    assert report.added == 1 and not report.skipped
