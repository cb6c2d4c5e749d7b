"""Benchmark: our MLX backend and trainer against raw mlx-lm on the same model.

    python bench/mlx.py                      # a random tiny Llama (hidden 256, 4 layers), built and converted here
    python bench/mlx.py --model ./model-mlx  # any MLX model directory (tokenizer must know the chat template or use plain)
    python bench/mlx.py --hidden 512 --layers 8 --tokens 256 --steps 20

Prints, for the same prompt ids, greedy decoding:
  generation tokens/s of ``load(...).generate`` (our backend: template, stop scanning,
  incremental detokenizer, cache bookkeeping) vs ``mlx_lm.stream_generate``; ratio = ours / mlx-lm;
and, for SFT with LoRA on the same examples, batch size, rank and layers:
  seconds per optimizer step of ``MLXTrainer`` vs ``mlx_lm.tuner.trainer.train``; ratio = ours / mlx-lm
  (mlx-lm compiles its step function; ours runs eagerly so that the ref-pass/accumulation code stays simple).
Each side is warmed up once before it is timed. Not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# This file is named mlx.py: keep its folder off the import path so ``import mlx`` finds the real package.
_here = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
sys.path.insert(0, str(_here.parent / "tests"))

QUESTION = "Explain in detail why spider silk is tough, and how its hierarchical structure of beta sheets helps."


def build_model(tmp: Path, hidden: int, layers: int) -> Path:
    from mlx_lm import convert
    from tiny_model import build_tiny_llama

    hf = build_tiny_llama(tmp / "hf", hidden=hidden, layers=layers)
    convert(str(hf), str(tmp / "mlx"), dtype="float32")
    return tmp / "mlx"


def bench_generation(model_dir: Path, n_tokens: int, repeats: int) -> dict:
    import mlx.core as mx
    from mlx_lm import stream_generate

    from preflexor_local.backends import GenerationRequest, load
    from preflexor_local.config import Sampling

    backend = load(str(model_dir))
    sampling = Sampling(temperature=0.0, repeat_penalty=1.0, dry_multiplier=0.0, max_tokens=n_tokens)
    req = GenerationRequest(messages=[{"role": "user", "content": QUESTION}], prefill="<|thinking|>", sampling=sampling)
    ids = backend.encode(backend.render(req))
    model, tok = backend.model, backend.tokenizer

    def ours():
        backend._cache, backend._held = None, []  # cold cache: same work as mlx-lm
        g = backend.generate(req)
        return g.completion_tokens, g.seconds - (g.ttft or 0.0), g.seconds

    def raw():
        t0 = time.perf_counter()
        first = None
        n = 0
        for r in stream_generate(model, tok, mx.array(ids), max_tokens=n_tokens):
            n += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        return n, end - first, end - t0

    ours(), raw()  # warm-up
    o, r = [], []
    for _ in range(repeats):  # interleaved, so load from other processes hits both sides alike
        o.append(ours())
        r.append(raw())

    def tps(rows):  # decode tokens/s after the first token, median over repeats
        return statistics.median((n - 1) / dt for n, dt, _ in rows if dt > 0)

    backend.close()
    return {
        "prompt_tokens": len(ids),
        "tokens": o[0][0],
        "ours_tps": tps(o),
        "mlx_lm_tps": tps(r),
        "ours_wall": statistics.median(w for *_, w in o),
        "mlx_lm_wall": statistics.median(w for *_, w in r),
    }


def bench_training(model_dir: Path, steps: int, batch: int, rank: int) -> dict:
    import mlx.core as mx
    import mlx.optimizers as optim
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load as mlx_load

    from preflexor_local.train.config import TrainConfig
    from preflexor_local.train.data import pair_from_obj
    from preflexor_local.train.mlx.trainer import MLXTrainer
    from preflexor_local.train.session import RunContext

    pairs = [
        pair_from_obj(
            {
                "prompt": f"{QUESTION} ({i})",
                "chosen": "<|thinking|>" + "beta sheets share load. " * (4 + i % 5) + "<|/thinking|>Hierarchy dissipates energy across scales.",
                "rejected": "No.",
            }
        )
        for i in range(4 * batch)
    ]
    out = Path(tempfile.mkdtemp(prefix="bench-mlx-"))
    times: list[float] = []
    cfg = TrainConfig(
        model=str(model_dir),
        output=str(out),
        method="sft",
        rank=rank,
        alpha=rank,
        dropout=0.0,
        batch_size=batch,
        grad_accum=1,
        lr=1e-4,
        train_embeddings=False,
        max_length=4096,
        max_grad_norm=1e9,
    )
    ctx = RunContext(output=out, quiet=True, log=lambda row: times.append(row["seconds"]))
    ours = MLXTrainer(cfg, ctx)
    examples = ours.tokenize(pairs).examples
    ours.train_round(pairs, 2)  # warm-up
    times.clear()
    ours.train_round(pairs, steps)
    ours_step = statistics.median(times)
    ours.close()

    model, _ = mlx_load(str(model_dir))
    model.freeze()
    linear_to_lora_layers(model, len(model.layers), {"rank": rank, "scale": 1.0, "dropout": 0.0})
    data = [(e.chosen_ids, sum(1 for x in e.chosen_labels if x == -100)) for e in examples]  # (tokens, prompt offset)
    opt = optim.Adam(learning_rate=1e-4)
    args = TrainingArgs(
        batch_size=batch,
        iters=steps,
        steps_per_report=10**9,
        steps_per_eval=10**9,
        steps_per_save=10**9,
        adapter_file=str(out / "mlx_lm_adapters.safetensors"),
        max_seq_length=4096,
    )
    import contextlib
    import io

    def run_raw(iters):
        args.iters = iters
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            train(model, opt, data, args=args)
        mx.eval(model.parameters())
        return time.perf_counter() - t0

    run_raw(2)  # warm-up (compiles)
    raw_step = (run_raw(steps + 2) - run_raw(2)) / steps  # per-step cost without the per-call compile and setup
    tokens = statistics.mean(len(e.chosen_ids) for e in examples)
    return {"steps": steps, "batch": batch, "rank": rank, "mean_tokens": tokens, "ours_s_per_step": ours_step, "mlx_lm_s_per_step": raw_step}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="an MLX model directory (default: build a random tiny Llama)")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--skip-training", action="store_true", help="only the generation benchmark")
    a = ap.parse_args()
    import mlx.core as mx
    import mlx_lm

    tmp = Path(tempfile.mkdtemp(prefix="bench-mlx-model-"))
    model = a.model or build_model(tmp, a.hidden, a.layers)
    print(f"mlx {mx.__version__}, mlx-lm {mlx_lm.__version__}, device {mx.default_device()}, model {model}")
    g = bench_generation(model, a.tokens, a.repeats)
    if a.skip_training:
        a.steps = 0
    print(f"generation ({g['prompt_tokens']} prompt tokens, {g['tokens']} generated, greedy):")
    print(f"  ours   {g['ours_tps']:9.1f} tok/s   wall {g['ours_wall']:.3f} s")
    print(f"  mlx-lm {g['mlx_lm_tps']:9.1f} tok/s   wall {g['mlx_lm_wall']:.3f} s")
    print(f"  ratio ours/mlx-lm: {g['ours_tps'] / g['mlx_lm_tps']:.2f} (tok/s), {g['mlx_lm_wall'] / g['ours_wall']:.2f} (wall speed)")
    if not a.steps:
        return
    t = bench_training(model, a.steps, a.batch, a.rank)
    print(f"SFT LoRA r={t['rank']}, batch {t['batch']}, ~{t['mean_tokens']:.0f} tokens/sequence, {t['steps']} steps:")
    print(f"  ours   {t['ours_s_per_step']:.4f} s/step")
    print(f"  mlx-lm {t['mlx_lm_s_per_step']:.4f} s/step")
    print(f"  ratio ours/mlx-lm: {t['ours_s_per_step'] / t['mlx_lm_s_per_step']:.2f} (s/step; >1 = slower)")


if __name__ == "__main__":
    main()
