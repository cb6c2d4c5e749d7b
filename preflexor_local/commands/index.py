"""``preflexor-local index``: build, search and maintain a local RAG store (sqlite-vec).

Wiring only; the work is in ``preflexor_local.rag`` (``index_folder``,
``open_store``, ``remove_paths``), which import their engines when they run.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from preflexor_local.config import cli_options, from_kwargs


def _default_store() -> str:
    from preflexor_local.models import home

    return str(home() / "index.db")


def store_option(fn):
    return click.option(
        "--store",
        "-s",
        "store",
        type=click.Path(dir_okay=False),
        default=None,
        help="The store file (default: index.db in the preflexor-local home, $PREFLEXOR_HOME).",
    )(fn)


def _store_path(store: str | None, create: bool = False) -> str:
    path = store or _default_store()
    if create and store is None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return path


def _emit(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


@click.group("index")
def index() -> None:
    """Build and search a local RAG store (one SQLite file, offline).

    \b
    preflexor-local index add ./papers ./notes --store bio.db
    preflexor-local index search "toughening mechanisms in nacre" --store bio.db -k 5
    preflexor-local index stats --store bio.db
    preflexor-local index remove ./papers/old.pdf --store bio.db
    """


from preflexor_local.rag.ingest import IndexConfig  # noqa: E402  (light: no engines at import)


@index.command("add")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@store_option
@cli_options(IndexConfig, exclude=("progress",))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def add(paths, store, as_json, quiet, **kwargs) -> None:
    """Index files and folders (recursively): .pdf .md .txt .rst .html .tex .org.

    Re-running indexes only new and changed files and drops deleted ones. Safe to
    interrupt or kill at any moment: a re-run completes the store without duplicates.
    """
    from preflexor_local.rag import index_folder

    config = from_kwargs(IndexConfig, kwargs)
    config.progress = not quiet and not as_json
    report = index_folder(list(paths), _store_path(store, create=True), config)
    if as_json:
        _emit(report.to_dict())
    else:
        click.echo(report.summary())
        if report.skipped:
            click.echo(f"{len(report.skipped)} file(s) skipped (reasons above)", err=True)


@index.command("search")
@click.argument("query")
@store_option
@click.option("-k", "k", type=int, default=5, show_default=True, help="How many chunks to return.")
@click.option("--embed-model", default=None, help="Embedding model directory (default: the store's own).")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON on stdout.")
def search(query, store, k, embed_model, as_json) -> None:
    """The chunks most similar to QUERY, best first (score = cosine similarity)."""
    from preflexor_local.rag import open_store

    with open_store(_store_path(store), embed_model=embed_model, readonly=True) as st:
        hits = st.search(query, k=k)
    if as_json:
        _emit([h.to_dict() for h in hits])
        return
    if not hits:
        click.echo("no results", err=True)
    for i, h in enumerate(hits, 1):
        click.secho(f"{i}. {h.score:.3f}  {h.path}  {h.span}  [chunk {h.chunk_id}]", bold=True)
        preview = " ".join(h.text.split())
        click.echo(f"   {preview[:300]}{'…' if len(preview) > 300 else ''}")


@index.command("stats")
@store_option
@click.option("--documents", "list_docs", is_flag=True, help="Also list every document with its chunk count.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON on stdout.")
def stats(store, list_docs, as_json) -> None:
    """Documents, chunks, embedding model, dimension and size of a store."""
    from preflexor_local.rag import open_store

    with open_store(_store_path(store), readonly=True) as st:
        info = st.stats()
        docs = st.documents() if list_docs else None
    if as_json:
        if docs is not None:
            info["documents_list"] = docs
        _emit(info)
        return
    rows = [
        ("store", info["path"]),
        ("documents", info["documents"]),
        ("chunks", f"{info['chunks']} ({info['unique_chunks']} distinct texts)"),
        ("model", f"{info['embed_model']} ({info['dimension']}-d)"),
        ("chunking", f"{info['chunk_tokens']} tokens, {info['chunk_overlap']} overlap"),
        ("size", f"{info['size_bytes'] / 2**20:.1f} MiB"),
        ("driver", f"{info['driver']}, sqlite-vec {info.get('vec_version', '?')}"),
    ]
    for name, value in rows:
        click.echo(f"{name:>10}  {value}")
    for d in docs or []:
        click.echo(f"{d['n_chunks']:>6}  {d['path']}")


@index.command("remove")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the removed paths as JSON on stdout.")
def remove(paths, store, as_json) -> None:
    """Remove documents (a file, or everything indexed under a folder) from the store."""
    from preflexor_local.rag import remove_paths

    removed = remove_paths(_store_path(store), list(paths))
    if as_json:
        _emit({"removed": removed})
    else:
        for p in removed:
            click.echo(f"removed {p}")
        click.echo(f"{len(removed)} document(s) removed", err=True)


__all__ = ["index"]
