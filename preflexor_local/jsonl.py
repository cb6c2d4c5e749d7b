"""The one durable JSONL appender: pairs, eval items, run logs and the demo recipe all append through it.

A run killed mid-write leaves a torn last line. Appending after it would glue the next row onto it, and the
glued line, now in the middle of the file, makes the whole file unreadable. So before its first append an
``Appender`` cuts the file back to its last newline, keeps the cut bytes in ``<file>.torn`` beside it (appended
there, so nothing is ever lost) and says so in one ``note:`` line. It then writes whole lines only, each
flushed and fsynced before the next row is made: a crash loses at most the row in progress.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

TORN_SUFFIX = ".torn"


def cut_torn_tail(path: str | Path, quiet: bool = False) -> int:
    """Cut ``path`` back to its last newline; the cut bytes go to ``<path>.torn``. Returns how many were cut."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        # Read back from the end until a newline: a torn line is one row, not the whole file.
        block, pos, tail = 1 << 16, size, b""
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
            if b"\n" in tail:
                break
        end = pos + tail.rfind(b"\n") + 1 if b"\n" in tail else 0
    torn = size - end
    if torn == 0:
        return 0
    with open(path, "rb") as f:
        f.seek(end)
        cut = f.read()
    keep = path.with_name(path.name + TORN_SUFFIX)
    with open(keep, "ab") as f:
        f.write(cut + b"\n")
        f.flush()
        os.fsync(f.fileno())
    with open(path, "r+b") as f:
        f.truncate(end)
        f.flush()
        os.fsync(f.fileno())
    if not quiet:
        print(f"note: {path} ended in a torn line ({torn} bytes, from an interrupted run): kept it in {keep} and cut it off", file=sys.stderr)
    return torn


class Appender:
    """Append JSON rows to ``path`` as whole, fsynced lines, after cutting a torn tail (once, before the first row)."""

    def __init__(self, path: str | Path, quiet: bool = False):
        self.path = Path(path)
        self.quiet = quiet
        self._f = None

    def append(self, row: dict) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            cut_torn_tail(self.path, quiet=self.quiet)
            self._f = open(self.path, "ab")
        # One write call per line: a kill between rows leaves whole lines only.
        self._f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        self._f.flush()
        os.fsync(self._f.fileno())

    def extend(self, rows: Iterable[dict]) -> None:
        for row in rows:
            self.append(row)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> Appender:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def append_jsonl(path: str | Path, rows: Iterable[dict], quiet: bool = False) -> None:
    """Append ``rows`` to ``path`` through an ``Appender``."""
    with Appender(path, quiet=quiet) as out:
        out.extend(rows)


def whole_rows(path: str | Path) -> Iterator[dict]:
    """The JSON objects of every whole line (a torn or unreadable line is skipped): what a resuming run has done."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return  # torn: the row in progress when a run was killed
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row
