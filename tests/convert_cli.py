"""Run ``preflexor-local`` in-process (as the installed entry point would) and collect exit code, stdout, stderr."""

from __future__ import annotations

import contextlib
import io


def run_cli(*args: str) -> tuple[int, str, str]:
    from preflexor_local.app.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return code, out.getvalue(), err.getvalue()
