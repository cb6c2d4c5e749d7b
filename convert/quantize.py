"""Re-quantise a GGUF file with llama.cpp's own quantizer, in-process (llama-cpp-python's binding).

K-quants (q4_k_m, q5_k_m, q6_k, …) need llama.cpp's importance-free block
search; ``llama_cpp.llama_model_quantize`` runs it without any llama.cpp binary.
Rows whose length is not a multiple of 256 fall back to a simpler type (llama.cpp
decides and reports it).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import _bootstrap  # noqa: F401  (run from a checkout)

import os
from pathlib import Path

from preflexor_local.errors import BackendUnavailableError, InvalidModelError, UsageError


def quantize_gguf(src: str | Path, out: str | Path, qtype: str, *, threads: int | None = None, quiet: bool = False) -> list[str]:
    """Write ``out`` = ``src`` quantised to ``qtype`` (e.g. "q4_k_m"); returns llama.cpp's log lines.

    ``out`` is written directly (callers wrap it atomically). llama.cpp's log is
    captured rather than printed (shown when it fails).
    """
    from preflexor_local.convert._common import capture_native_stderr

    try:
        import llama_cpp
    except ImportError:
        raise BackendUnavailableError(
            "K-quant output needs llama-cpp-python, which is not installed", hint="pip install 'preflexor-local[llama]', or use --outtype f16/bf16/q8_0"
        ) from None
    const = f"LLAMA_FTYPE_MOSTLY_{qtype.upper()}"
    ftype = getattr(llama_cpp, const, None)
    if ftype is None:
        raise UsageError(f"llama.cpp has no quantisation type {qtype!r}", hint="try q4_k_m, q5_k_m, q6_k or q8_0")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or threads_default()
    with capture_native_stderr() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params)
    if rc != 0:
        tail = " | ".join(ln.strip() for ln in log[-3:])
        raise InvalidModelError(f"llama.cpp failed to quantise {src} to {qtype} (code {rc}): {tail}", hint="check that the file loads in llama.cpp")
    return log


def _command():
    import click

    @click.command("quantize")
    @click.argument("src", type=click.Path(path_type=Path, exists=True, dir_okay=False))
    @click.argument("qtype")
    @click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
    @click.option("--force", is_flag=True)
    def quantize_cmd(src, qtype, output, force):
        """Quantise the GGUF file SRC to QTYPE (q4_k_m, q5_k_m, q6_k, q8_0, …) with llama.cpp."""
        from preflexor_local.convert._common import atomic_file, check_output

        out = check_output(output, force)
        with atomic_file(out) as tmp:
            quantize_gguf(src, tmp, qtype, threads=threads_default())
        click.echo(str(out))

    return quantize_cmd


def threads_default() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


command = _command()

if __name__ == "__main__":
    from preflexor_local.convert._common import run_script

    run_script(command)
