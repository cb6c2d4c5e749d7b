"""Benchmark the converters: time and peak memory against model size, and equality with a reference GGUF.

    python bench/convert.py                       # tiny Llamas of growing size: f16 / q8_0 / q4_k_m
    python bench/convert.py --gemma-hf DIR        # + Gemma 3 270M: tensor-by-tensor vs llama.cpp's own GGUF

Each conversion runs in a fresh process (peak RSS is that process's). "raw" is
the engine-free lower bound: read every tensor with safetensors and write its
f16 bytes to a file; the ratio column is our GGUF time / raw time.

The reference check: the embedded Gemma GGUF was written by llama.cpp's own
converter; ``--gemma-hf`` is the dense HF checkpoint dequantised from it
(``convert hf``). Converting that back with ours to f32 must reproduce every
tensor of the reference after dequantisation (same names, shapes, values up to
float32 rounding) and the same tokenizer arrays.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
RSS = "import resource,sys;print('PEAK_KB',resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,file=sys.stderr)"


def _run(code: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = subprocess.run([PY, "-c", code + "\n" + RSS], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    kb = int(next(ln.split()[1] for ln in r.stderr.splitlines() if ln.startswith("PEAK_KB")))
    return dt, kb


def build(path: Path, hidden: int, layers: int) -> int:
    sys.path.insert(0, str(ROOT / "tests"))
    from convert_fixtures import build_tiny

    build_tiny(path, arch="llama", hidden=hidden, layers=layers)
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def bench_sizes(work: Path, sizes, outtypes=("f16", "q8_0", "q4_k_m")) -> None:
    print(f"{'model':<18}{'f32 MiB':>9}{'type':>8}{'sec':>8}{'raw s':>8}{'ratio':>7}{'peak MiB':>10}{'out MiB':>9}")
    for hidden, layers in sizes:
        src = work / f"llama-h{hidden}-l{layers}"
        size = build(src, hidden, layers)
        raw_out = work / "raw.bin"
        raw_t, _ = _run(f"""
from safetensors import safe_open
import torch
with safe_open({str(src / "model.safetensors")!r}, framework='pt') as f, open({str(raw_out)!r}, 'wb') as o:
    for k in f.keys(): o.write(f.get_tensor(k).to(torch.float16).numpy().tobytes())""")
        for outtype in outtypes:
            out = work / f"{src.name}-{outtype}.gguf"
            dt, kb = _run(f"""
from preflexor_local.convert.hf_to_gguf import convert_to_gguf
convert_to_gguf({str(src)!r}, {str(out)!r}, {outtype!r}, force=True, quiet=True)""")
            print(
                f"{src.name:<18}{size / 2**20:>9.1f}{outtype:>8}{dt:>8.2f}{raw_t:>8.2f}{dt / raw_t:>7.1f}{kb / 1024:>10.0f}{out.stat().st_size / 2**20:>9.1f}"
            )


def bench_gemma(work: Path, gemma_hf: Path, reference: Path | None) -> None:
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize

    if reference is None:
        from preflexor_local.models import default_model_path

        reference = default_model_path()
    ours = work / "gemma-ours-f32.gguf"
    dt, kb = _run(f"""
from preflexor_local.convert.hf_to_gguf import convert_to_gguf
convert_to_gguf({str(gemma_hf)!r}, {str(ours)!r}, 'f32', force=True, quiet=True)""")
    print(f"\nGemma 3 270M HF -> f32 GGUF: {dt:.1f} s, peak {kb / 1024:.0f} MiB, {ours.stat().st_size / 2**20:.0f} MiB")
    a, b = GGUFReader(str(reference)), GGUFReader(str(ours))
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    print(f"tensors: reference {len(ta)}, ours {len(tb)}, same names: {set(ta) == set(tb)}")
    worst, equal = 0.0, 0
    for name, t in ta.items():
        if name not in tb:
            print(f"  missing in ours: {name}")
            continue
        x = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        y = np.asarray(tb[name].data, dtype=np.float32).reshape(-1)
        if x.shape != y.shape:
            print(f"  shape differs: {name} {x.shape} vs {y.shape}")
            continue
        d = float(np.abs(x - y).max()) if x.size else 0.0
        rel = d / (float(np.abs(x).max()) + 1e-12)
        worst = max(worst, rel)
        equal += rel < 1e-6
    print(f"tensor values: {equal}/{len(ta)} equal to float32 rounding (worst max|diff|/max|x| = {worst:.2e})")
    for key in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.model",
    ):
        fa, fb = a.fields.get(key), b.fields.get(key)
        same = fa is not None and fb is not None and fa.contents() == fb.contents()
        print(f"  {key}: {'same' if same else 'DIFFERENT'}")
    sa, sb = (f.contents() if (f := g.fields.get("tokenizer.ggml.scores")) is not None else None for g in (a, b))  # a BPE may have none
    print(
        "  tokenizer.ggml.scores: "
        + ("same" if sa == sb else "different values (ours = -merge rank of the BPE read back; the merge order is what matters, see `convert verify`)")
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gemma-hf", type=Path, help="dense HF dir made by `convert hf` from the embedded Gemma GGUF")
    ap.add_argument("--reference", type=Path, help="reference GGUF (default: the embedded Gemma GGUF)")
    ap.add_argument("--sizes", default="64x2,256x4,512x8,1024x8", help="hidden x layers list")
    ap.add_argument("--types", default="f16,q8_0,q4_k_m", help="output types to time")
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",") if s]
    with tempfile.TemporaryDirectory() as d:
        bench_sizes(Path(d), sizes, [t for t in args.types.split(",") if t])
        if args.gemma_hf:
            bench_gemma(Path(d), args.gemma_hf, args.reference)
    print(json.dumps({"python": sys.version.split()[0], "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
