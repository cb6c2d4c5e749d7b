"""SQLite connections that can load sqlite-vec, on every Python.

Many Pythons (pyenv builds, macOS's system Python, some distro builds) ship a
``sqlite3`` module compiled without loadable-extension support. We use the
standard module when it can load extensions and otherwise fall back to
``sqlean.py``: a maintained DB-API drop-in with Linux, macOS and Windows wheels.
It was chosen over ``apsw`` because it speaks the same DB-API as ``sqlite3``, so
the store has exactly one code path whichever driver is underneath (apsw has no
``commit()``/``fetchone`` semantics of its own and would need a second one).
``PREFLEXOR_SQLITE_DRIVER=sqlite3|sqlean`` forces a driver (for tests and bug reports).
"""

from __future__ import annotations

import importlib
import os
from functools import cache
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

from ..errors import BackendUnavailableError, PreflexorError

DRIVERS = ("sqlite3", "sqlean")
INSTALL_HINT = "pip install 'sqlean.py==3.50.4.5' 'sqlite-vec==0.1.9'  (or pip install 'preflexor-local[rag]')"


class StoreError(PreflexorError):
    """A RAG store file is missing, damaged, or does not match the request."""


def _can_load(mod: ModuleType) -> bool:
    import sqlite_vec

    try:
        conn = mod.connect(":memory:")
        try:
            conn.enable_load_extension(True)
            sqlite_vec.load(conn)
            conn.execute("select vec_version()").fetchone()
        finally:
            conn.close()
        return True
    except Exception:  # AttributeError (no extension support), OperationalError (not authorized), ...
        return False


@cache
def driver(forced: str | None = None) -> ModuleType:
    """The DB-API module used for stores: stdlib ``sqlite3`` if it can load sqlite-vec, else ``sqlean``."""
    try:
        import sqlite_vec  # noqa: F401
    except ImportError:
        raise BackendUnavailableError("the RAG store needs the sqlite-vec package, which is not installed", hint=INSTALL_HINT) from None
    forced = forced or os.environ.get("PREFLEXOR_SQLITE_DRIVER") or None
    names = (forced,) if forced else DRIVERS
    for name in names:
        if name not in DRIVERS:
            raise BackendUnavailableError(f"unknown SQLite driver {name!r} in PREFLEXOR_SQLITE_DRIVER", hint=f"use one of: {', '.join(DRIVERS)}")
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        if _can_load(mod):
            return mod
    tried = " or ".join(names)
    raise BackendUnavailableError(f"no SQLite driver here can load the sqlite-vec extension (tried {tried})", hint=INSTALL_HINT)


def connect(path: str | Path, readonly: bool = False, timeout: float = 30.0):
    """A connection to ``path`` with sqlite-vec loaded, in autocommit mode (we BEGIN ourselves)."""
    import sqlite_vec

    mod = driver()
    mode = "ro" if readonly else "rwc"
    uri = f"file:{quote(str(Path(path).absolute()))}?mode={mode}"
    try:
        conn = mod.connect(uri, uri=True, isolation_level=None, timeout=timeout, check_same_thread=False)
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    except mod.Error as err:
        raise StoreError(f"cannot open the store {path}: {err}", hint="check the path and its permissions") from None
    return conn


def driver_name() -> str:
    mod = driver()
    return f"{mod.__name__} (SQLite {mod.sqlite_version})"
