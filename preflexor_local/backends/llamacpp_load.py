"""The one way the project opens a GGUF with llama.cpp: ``open_llama``, with the CPU fault fallback.

On Xeons with AMX (Sapphire Rapids and newer) a natively built llama.cpp serves quantised weights from its AMX
"extra buffer type", and ``ggml_backend_amx_mul_mat`` dies with SIGSEGV at the first decode (llama.cpp issue
#20824, PR #26954: the tile config is optimised away and worker threads lack the XTILEDATA permission). Loading
with ``llama_model_params.use_extra_bufts = False`` avoids it; it also turns off CPU weight repacking, which costs
about 15 % of decode speed, so it is done only where AMX is both present and broken.

The policy, ``PREFLEXOR_LLAMA_EXTRA_BUFTS``: ``auto`` (default), ``on`` or ``off``. In ``auto``, where the loaded
library reports ``AMX_INT8 = 1`` a probe child (``llamacpp_probe``) decodes a tiny Q4_K_M model with extra buffers
on; a child killed by a signal (or hung, or failed) means broken. The verdict is cached per CPU and library build in
``<home>/llama-probe.json``, so the probe runs once per machine. Where it is broken every load says so once, in a
``note:`` line, and ``describe()`` carries it for ``--json`` and ``models``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

ENV = "PREFLEXOR_LLAMA_EXTRA_BUFTS"
POLICIES = ("auto", "on", "off")
PROBE_TIMEOUT_S = 180
SLOWER = "about 15 % slower decode"

_load_lock = threading.Lock()
_noted: set[str] = set()


@dataclass(frozen=True)
class Verdict:
    """Whether loads use llama.cpp's extra buffer types, and why."""

    extra_bufts: bool
    reason: str  # one line: what was decided from what

    @property
    def note(self) -> str | None:
        return None if self.extra_bufts else f"llama.cpp loads without extra buffer types: {self.reason} ({SLOWER}; {ENV}=on forces them)"


def policy() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in POLICIES:
        raise UsageError(f"{ENV} must be one of {', '.join(POLICIES)}, got {value!r}", hint=f"unset it, or set {ENV}=auto")
    return value


def system_info() -> str:
    import llama_cpp

    return llama_cpp.llama_print_system_info().decode("utf-8", "replace")


def reports_amx(info: str) -> bool:
    return "AMX_INT8 = 1" in info


def _cache_key(info: str) -> str:
    """The CPU (model name and flags) and the library build (path, size, mtime, feature line)."""
    import llama_cpp.llama_cpp as capi

    cpu = ""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        pass
    lib = Path(capi._lib._name) if getattr(capi._lib, "_name", None) else Path(capi.__file__)
    st = lib.stat() if lib.exists() else None
    build = f"{lib}:{st.st_size}:{st.st_mtime_ns}" if st else str(lib)
    return hashlib.sha256("\0".join((cpu, build, info)).encode()).hexdigest()[:32]


def run_probe(command: Sequence[str], timeout: float = PROBE_TIMEOUT_S) -> tuple[bool | None, str]:
    """Run a probe child: (True, why) it decoded, (False, why) it died or hung, (None, why) it could not run."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"the probe decode hung for {timeout:g} s"
    if done.returncode == 0:
        return True, "the probe decoded"
    if done.returncode < 0:
        import signal

        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return False, f"a probe decode was killed by {name}"
    tail = next((ln for ln in reversed(done.stderr.splitlines()) if ln.strip()), "no message")
    return None, f"the probe could not run (exit {done.returncode}: {tail[:200]})"


def probe_command(work: str, threads: int) -> list[str]:
    return [sys.executable, "-m", "preflexor_local.backends.llamacpp_probe", work, str(threads)]


def decide(info: str, cache: Path, command: Sequence[str] | None = None, threads: int = 2) -> Verdict:
    """The ``auto`` verdict for library features ``info``; a probe's clear answer is cached in ``cache``."""
    if not reports_amx(info):
        return Verdict(True, "no AMX in this llama.cpp build")
    key = _cache_key(info)
    try:
        stored = json.loads(cache.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        stored = None
    if isinstance(stored, dict) and isinstance(stored.get("extra_bufts"), bool):
        return Verdict(stored["extra_bufts"], stored.get("reason", "cached probe verdict"))
    print("note: this CPU has AMX; checking once that llama.cpp's AMX kernels run here …", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="preflexor-probe-") as work:
        ok, why = run_probe(command or probe_command(work, threads))
    if ok is None:  # not a verdict on AMX: stay safe for this process, ask again next time
        return Verdict(False, f"AMX could not be checked: {why}")
    verdict = Verdict(ok, f"AMX works ({why})" if ok else f"AMX is broken on this CPU ({why})")
    from ..atomic import write_json

    try:
        table = json.loads(cache.read_text()) if cache.is_file() else {}
        table = table if isinstance(table, dict) else {}
    except (OSError, ValueError):
        table = {}
    table[key] = {"extra_bufts": verdict.extra_bufts, "reason": verdict.reason}
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json(cache, table)
    return verdict


_verdict: Verdict | None = None


def verdict(threads: int = 2) -> Verdict:
    """This process's verdict (the environment's policy, else the cached or probed one)."""
    global _verdict
    forced = policy()
    if forced != "auto":
        return Verdict(forced == "on", f"{ENV}={forced}")
    if _verdict is None:
        from ..models import home

        _verdict = decide(system_info(), home() / "llama-probe.json", threads=threads)
    return _verdict


def note_once(v: Verdict) -> None:
    """The fallback, said once per process (dim, on stderr)."""
    if v.note and v.note not in _noted:
        _noted.add(v.note)
        dim = sys.stderr.isatty()
        print(("\x1b[2m" if dim else "") + "note: " + v.note + ("\x1b[0m" if dim else ""), file=sys.stderr, flush=True)


@contextlib.contextmanager
def _defaults_without_extra_bufts():
    """Llama() builds its model parameters inside __init__ from ``llama_model_default_params()`` and takes no
    ``use_extra_bufts`` argument: the defaults it reads are swapped while the block runs."""
    import llama_cpp.llama_cpp as capi

    with _load_lock:
        defaults = capi.llama_model_default_params

        def without_extra_bufts():
            params = defaults()
            params.use_extra_bufts = False
            return params

        capi.llama_model_default_params = without_extra_bufts
        try:
            yield
        finally:
            capi.llama_model_default_params = defaults


def open_llama(path, *, extra_bufts: bool | None = None, **kwargs):
    """``llama_cpp.Llama(model_path=path, **kwargs)``, without extra buffer types where they crash this CPU.

    ``extra_bufts``: force either way (the probe itself forces them on); ``None`` follows ``verdict()``.
    The chosen verdict is kept on the returned object as ``preflexor_verdict``.
    """
    import llama_cpp

    kwargs.setdefault("verbose", False)
    v = Verdict(extra_bufts, "forced by the caller") if extra_bufts is not None else verdict(kwargs.get("n_threads") or 2)
    note_once(v)
    with contextlib.nullcontext() if v.extra_bufts else _defaults_without_extra_bufts():
        llm = llama_cpp.Llama(model_path=str(path), **kwargs)
    llm.preflexor_verdict = v
    return llm


def serve_main(argv: list[str]) -> None:
    """``python -m llama_cpp.server ARGS`` under the same verdict: the peer server that tests and benches compare
    against (it would otherwise load the Q4 model with AMX and crash where our backend does not)."""
    import runpy

    v = verdict()
    note_once(v)
    sys.argv = ["llama_cpp.server", *argv]
    with contextlib.nullcontext() if v.extra_bufts else _defaults_without_extra_bufts():
        runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":  # python -m preflexor_local.backends.llamacpp_load ARGS… = llama_cpp.server ARGS…
    serve_main(sys.argv[1:])
