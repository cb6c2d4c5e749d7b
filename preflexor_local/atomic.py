"""Atomic outputs: a file or folder appears under its final name only once it is complete.

Everything is written under a temporary name beside the target (same folder, so
the rename stays on one file system) and renamed into place at the end; a crash
or Ctrl-C leaves at worst a dot-named ``….part`` beside it, never a half-written
target. A folder that already exists is moved aside first and removed only
after the new one is in place. JSON state files are also fsynced before the
rename, so a power loss cannot leave an empty file under the final name.
Torch-free and dependency-free: the converters, the trainers and the run loop
all write through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def tmp_name(target: Path, tag: str) -> Path:
    """The temporary name beside ``target``; a file keeps its suffix (``mx.save_safetensors`` appends one otherwise)."""
    suffix = target.suffix if tag == "file" else ""
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}.part{suffix}")


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success it replaces ``target`` atomically."""
    target = Path(target)
    tmp = tmp_name(target, "file")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def replace_dir(tmp: Path, target: Path) -> None:
    """Put the finished folder ``tmp`` at ``target``; an old ``target`` is removed only after the swap."""
    old = None
    if target.exists():
        old = tmp_name(target, "old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a fresh temp folder beside ``target``; on success it takes ``target``'s place.

    ``keep_existing``: a ``target`` that appeared meanwhile (another process built the same content) is kept and
    ours dropped, so a reader of the first one never sees it swapped out under it.
    """
    target = Path(target)
    tmp = tmp_name(target, "dir")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if not keep_existing:
            replace_dir(tmp, target)
        else:
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.is_dir():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON, fsynced, then renamed into place."""
    path = Path(path)
    with atomic_file(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=2, default=str))
            f.flush()
            os.fsync(f.fileno())


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` fsynced under a temp name, then rename it into place (readers see old or new, never half)."""
    with atomic_file(Path(path)) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
