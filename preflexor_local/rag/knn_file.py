"""The ``<store>.knn`` file: an index saved beside its store, so the next process skips the build.

It saves the next process the k-means training (or the finding that it does not pay) and the full read from
SQLite; it is written above ``KnnSettings.flat_max`` vectors only. Layout: ``MAGIC | u64 header length | JSON
header | arrays, each 4096-aligned`` (read back memory-mapped). It is written to a temporary name, fsynced and
renamed into place, so it is whole or absent. ``read_file`` refuses a missing, foreign or truncated file; whether
the file is *this* store's, and current, is ``index.VectorIndex``'s check.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .exact import Base

FORMAT = 1
MAGIC = b"PLXKNN\x00\x01"
_ALIGN = 4096


def write_file(path: Path, header: dict, base: Base) -> None:
    """``MAGIC | u64 header length | JSON header | arrays, each 4096-aligned``; temp file, fsync, rename."""
    from ..atomic import atomic_file, tmp_name

    _remove_orphans(path, tmp_name(path, "file"))
    arrays = {"ids": base.ids, "vecs": base.vecs}
    if base.kind == "ivf":
        arrays.update(centroids=base.centroids, offsets=base.offsets)
    layout, pos = {}, 0
    for name, arr in arrays.items():
        layout[name] = {"offset": pos, "dtype": np.asarray(arr).dtype.str, "shape": list(np.shape(arr))}
        pos += -(-np.asarray(arr).nbytes // _ALIGN) * _ALIGN
    meta = dict(
        header,
        format=FORMAT,
        kind=base.kind,
        nprobe=base.nprobe,
        trained_n=base.trained_n,
        recall=base.recall,
        scanned=base.scanned,
        build_s=base.build_s,
        arrays=layout,
    )
    text = json.dumps(meta).encode()
    start = -(-(len(MAGIC) + 8 + len(text)) // _ALIGN) * _ALIGN
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(MAGIC + len(text).to_bytes(8, "little") + text)
            for name, arr in arrays.items():
                fh.seek(start + layout[name]["offset"])
                np.ascontiguousarray(arr).tofile(fh)
            fh.truncate(start + pos)
            fh.flush()
            os.fsync(fh.fileno())


def _remove_orphans(path: Path, mine: Path) -> None:
    """Delete temp files of ``path`` left by killed writers (a 1M-vector index is 1.5 GB); live writers' stay."""
    prefix, suffix = mine.name.rsplit("-", 1)[0] + "-", ".part" + path.suffix
    for tmp in path.parent.glob(f"{prefix}*{suffix}"):
        pid = tmp.name[len(prefix) : -len(suffix)]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # alive, or not ours to ask about
            pass


def read_header(path: Path) -> tuple[dict, int] | None:
    """The JSON header and where the arrays start, or None for a missing or foreign file."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(MAGIC) + 8)
            if len(head) < len(MAGIC) + 8 or head[: len(MAGIC)] != MAGIC:
                return None
            size = int.from_bytes(head[len(MAGIC) :], "little")
            if size > 1 << 24:
                return None
            meta = json.loads(fh.read(size))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    return meta, -(-(len(MAGIC) + 8 + size) // _ALIGN) * _ALIGN


def read_file(path: Path) -> tuple[dict, Base] | None:
    """The header and memory-mapped arrays of an index file, or None if it is missing, foreign or truncated."""
    got = read_header(path)
    if got is None:
        return None
    meta, start = got
    try:
        total = path.stat().st_size
        arrays = {}
        for name, spec in meta["arrays"].items():
            dtype, shape = np.dtype(spec["dtype"]), tuple(spec["shape"])
            end = start + spec["offset"] + dtype.itemsize * int(np.prod(shape))
            if end > total:
                return None
            arrays[name] = np.memmap(path, dtype, "r", start + spec["offset"], shape) if np.prod(shape) else np.empty(shape, dtype)
        base = Base(
            meta["kind"],
            arrays["ids"],
            arrays["vecs"],
            arrays.get("centroids"),
            arrays.get("offsets"),
            int(meta["nprobe"]),
            int(meta["trained_n"]),
            float(meta["recall"]),
            float(meta["scanned"]),
            float(meta["build_s"]),
        )
    except (OSError, KeyError, TypeError, ValueError):
        return None
    n = len(base.ids)
    if base.vecs.shape != (n, meta.get("dim")) or meta.get("n") != n:
        return None
    if base.kind == "ivf" and (
        base.offsets is None
        or base.centroids is None
        or len(base.offsets) != base.nlist + 1
        or int(base.offsets[-1]) != n
        or not 1 <= base.nprobe <= base.nlist
    ):
        return None
    if base.kind not in ("flat", "ivf"):
        return None
    return meta, base


def knn_file_summary(path: Path) -> dict:
    """What an index file beside a store says about itself (header only; nothing is loaded or checked)."""
    got = read_header(path)
    if got is None:
        return {"kind": None, "file": None}
    meta = got[0]
    out = {"kind": meta.get("kind"), "vectors": meta.get("n"), "generation": meta.get("generation"), "file": str(path)}
    if meta.get("kind") == "ivf":
        out.update(nlist=len(meta["arrays"]["offsets"]["shape"]) and meta["arrays"]["offsets"]["shape"][0] - 1, nprobe=meta.get("nprobe"))
    return out
