"""What the recursive engine costs on top of raw llama-cpp-python, in one run.

1. Engine overhead: run ``ask`` (3 rounds, greedy) on the default Gemma GGUF,
   recording every call's rendered prompt and token count; then replay the same
   prompts through raw ``Llama.create_completion`` on a second, identically
   configured ``Llama``, generating the same number of tokens. Ratio = engine
   wall time / raw wall time (model load excluded; target <= 1.05).
2. Cache reuse, without and with a RAG-like context (``--rag-k`` fixed chunks of
   ~``--rag-tokens`` tokens before the question, as ``ask --rag -k 5`` adds):
   prompt tokens evaluated against the ideal computed from the recorded prompts
   (each call evaluates only the tokens no earlier prompt has at the same
   positions, and at least its last one; target <= 1.05x), the same for one
   cached sequence (the backend before several slots), and time to first token
   of rounds 2+ against round 1's first call (target <= round 1's).
3. Start-up: wall time of ``preflexor-local --help`` against ``python -c pass``.

    python bench/ask_overhead.py [--model M.gguf] [--rounds 3] [--max-tokens 64] [--repeats 2] [--rag-k 5] [--rag-tokens 200]

``--model`` is a GGUF file (default: the default model's base GGUF, no adapter).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

QUESTION = "Why is spider silk so tough?"
# Fixed passages standing in for retrieved chunks: the same text every run.
PASSAGES = [
    "Spider dragline silk combines a tensile strength near 1 GPa with an extensibility of about 30 percent.",
    "Its proteins, spidroins, hold crystalline beta-sheet nanocrystals rich in polyalanine runs.",
    "The nanocrystals are embedded in an amorphous matrix of glycine-rich helices and random coils.",
    "Hydrogen bonds inside the beta sheets break and re-form under load, dissipating energy.",
    "Nanocrystals a few nanometres across are stronger than larger ones, because their bonds fail together.",
    "The fibre has a skin-core structure: a lipid and glycoprotein coat around a core of aligned fibrils.",
    "Humidity makes dragline silk supercontract, shrinking by up to half as water plasticises the matrix.",
    "Toughness is the area under the stress-strain curve, about 160 MJ per cubic metre for dragline silk.",
    "Spinning aligns the proteins: a pH drop and shear in the duct turn the liquid dope into a solid fibre.",
    "Nacre, bone and silk share one principle: stiff building blocks held by soft, sacrificial bonds.",
    "Capture spiral silk is much more extensible than dragline silk and is coated in aqueous glue droplets.",
    "Mechanical tests at high strain rates show that silk stiffens as it is pulled faster.",
]


def rag_context(backend, k: int, tokens: int) -> list[dict]:
    """``k`` fixed chunks of about ``tokens`` tokens each, shaped like the store's search results."""
    chunks = []
    for i in range(k):
        text, j = "", i * 5
        while backend.count_tokens(text) < tokens:
            text += PASSAGES[j % len(PASSAGES)] + " "
            j += 1
        chunks.append({"source": f"silk-{i + 1}.md", "text": text.strip()})
    return chunks


def run_engine(backend, rounds: int, max_tokens: int, context: list[dict] | None = None):
    from preflexor_local.backends import Backend
    from preflexor_local.config import Recursion, Sampling
    from preflexor_local.reasoning.engine import Engine

    calls = []

    class Recording(Backend):
        kind = "recording"

        def __init__(self, inner):
            super().__init__(inner.name)
            self.inner, self.template = inner, inner.template

        def stream(self, request):
            prompt = self.inner.render(request)
            for item in self.inner.stream(request):
                if not isinstance(item, str):
                    calls.append((prompt, item))
                yield item

    sampling = Sampling(temperature=0, max_tokens=max_tokens, seed=0)
    engine = Engine(Recording(backend), sampling=sampling, recursion=Recursion(rounds=rounds), context=context)
    t0 = time.perf_counter()
    transcript = engine.run(QUESTION)
    return time.perf_counter() - t0, transcript, calls


def replay_raw(llm, backend, calls, repeat_penalty: float) -> float:
    t0 = time.perf_counter()
    for prompt, gen in calls:
        ids = backend.encode(prompt)
        llm.create_completion(ids, max_tokens=max(1, gen.completion_tokens), temperature=0.0, top_k=1, repeat_penalty=repeat_penalty, seed=0)
    return time.perf_counter() - t0


def ideal_evaluated(prompts: list[list[int]]) -> list[int]:
    """Per call, the prompt tokens no earlier prompt has at the same positions (at least the last one).

    Computed here, independently of the KV slots it measures (``os.path.commonprefix`` works on any sequences).
    """
    return [len(ids) - max((len(os.path.commonprefix([ids[:-1], p])) for p in prompts[:i]), default=0) for i, ids in enumerate(prompts)]


def reuse_report(label: str, backend, transcript, calls, single) -> dict:
    """Print one scenario's reuse figures; ``single``: the same scenario's calls with one cached sequence."""
    prompts = [backend.encode(prompt) for prompt, _ in calls]
    ideal = ideal_evaluated(prompts)
    evaluated = [g.prompt_tokens - g.cached_tokens for _, g in calls]
    single_evaluated = sum(g.prompt_tokens - g.cached_tokens for _, g in single)
    total = sum(len(p) for p in prompts)
    first = transcript.rounds[0].calls[0]
    later = [r.calls[0] for r in transcript.rounds[1:]]
    ttft_later = statistics.mean(c.ttft for c in later) if later else float("nan")
    ratio = sum(evaluated) / sum(ideal)
    print(f"\n{label}: {len(calls)} calls, {total} prompt tokens")
    print(f"  {'role':<11}{'channel':<11}{'prompt':>7}{'cached':>8}{'evaluated':>10}{'ideal':>7}{'ttft s':>8}")
    for c, ev, idl in zip(transcript.calls, evaluated, ideal):
        print(f"  {c.role:<11}{c.channel:<11}{c.prompt_tokens:>7}{c.cached_tokens:>8}{ev:>10}{idl:>7}{c.ttft or 0:>8.3f}")
    print(f"  prompt tokens evaluated {sum(evaluated):6d}   ideal {sum(ideal)}: ratio {ratio:.3f} (target <= 1.05)")
    print(f"  one cached sequence     {single_evaluated:6d}   ratio {single_evaluated / sum(ideal):.3f} to the ideal (the backend before slots)")
    print(f"  reused                  {total - sum(evaluated):6d} of {total} ({100 * (total - sum(evaluated)) / max(1, total):.0f}%)")
    print(f"  TTFT round 1 (thinking) {first.ttft:7.3f} s  prompt {first.prompt_tokens}, {first.cached_tokens} cached")
    print(
        f"  TTFT rounds 2+ (answer) {ttft_later:7.3f} s  prompts {[c.prompt_tokens for c in later]}, {[c.cached_tokens for c in later]} cached"
        f"  ({ttft_later / first.ttft:.2f}x round 1, target <= 1)"
    )
    return {"ratio": ratio, "ttft_ratio": ttft_later / first.ttft}


def startup(cmd: list[str], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a GGUF file (default: the default model's base GGUF)")
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rag-k", type=int, default=5, help="chunks of fixed context for the RAG-like run (0: skip it)")
    ap.add_argument("--rag-tokens", type=int, default=200, help="tokens per chunk")
    ap.add_argument("--startup-runs", type=int, default=5, help="start-up timings (median)")
    args = ap.parse_args(argv)

    from preflexor_local.backends import load
    from preflexor_local.backends.llamacpp import LlamaCppBackend, default_threads
    from preflexor_local.backends.llamacpp_load import open_llama
    from preflexor_local.config import LoadOptions, Sampling
    from preflexor_local.models import default_model_path

    path = Path(args.model) if args.model else default_model_path()
    backend = load(str(path), LoadOptions(ctx=args.ctx))
    single = LlamaCppBackend(path, LoadOptions(ctx=args.ctx), slots=1)
    raw = open_llama(path, n_ctx=args.ctx, n_threads=default_threads(), n_threads_batch=default_threads())
    rp = Sampling().repeat_penalty
    ours, theirs = [], []
    for _ in range(args.repeats):
        backend.clear_cache()
        secs, transcript, calls = run_engine(backend, args.rounds, args.max_tokens)
        ours.append(secs)
        theirs.append(replay_raw(raw, backend, calls, rp))
    tokens = sum(g.completion_tokens for _, g in calls)
    prompt_tokens = sum(g.prompt_tokens for _, g in calls)
    ratio = min(ours) / min(theirs)

    bin_ = Path(sys.executable).with_name("preflexor-local")
    help_s = startup([str(bin_), "--help"], args.startup_runs)
    python_s = startup([sys.executable, "-c", "pass"], args.startup_runs)

    print(
        f"model: {path.name}, {args.rounds} rounds, greedy, {len(calls)} calls, {tokens} generated / {prompt_tokens} prompt tokens, "
        f"{len(backend.slots.seqs)} KV slots"
    )
    print(f"engine wall time        {min(ours):7.2f} s   (runs: {', '.join(f'{s:.2f}' for s in ours)})")
    print(f"raw llama-cpp-python    {min(theirs):7.2f} s   (same prompts, same token counts)")
    print(f"ratio engine/raw        {ratio:7.3f}     (target <= 1.05)")
    print(f"--help start-up         {help_s * 1000:7.0f} ms  (python -c pass: {python_s * 1000:.0f} ms)")

    single.clear_cache()
    reuse_report("question only", backend, transcript, calls, run_engine(single, args.rounds, args.max_tokens)[2])
    if args.rag_k:
        context = rag_context(backend, args.rag_k, args.rag_tokens)
        backend.clear_cache()
        single.clear_cache()
        _, rag_transcript, rag_calls = run_engine(backend, args.rounds, args.max_tokens, context)
        reuse_report(
            f"RAG-like context ({args.rag_k} chunks of ~{args.rag_tokens} tokens)",
            backend,
            rag_transcript,
            rag_calls,
            run_engine(single, args.rounds, args.max_tokens, context)[2],
        )
    backend.close()
    single.close()
    raw.close()


if __name__ == "__main__":
    main()
