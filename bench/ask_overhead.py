"""What the recursive engine costs on top of raw llama-cpp-python, in one run.

1. Engine overhead: run ``ask`` (3 rounds, greedy) on the default Gemma GGUF,
   recording every call's rendered prompt and token count; then replay the same
   prompts through raw ``Llama.create_completion`` on a second, identically
   configured ``Llama``, generating the same number of tokens. Ratio = engine
   wall time / raw wall time (model load excluded; target <= 1.05).
2. Cache reuse: time to first token of the reasoner's answer calls in rounds 2+
   against round 1's first call, plus how many prompt tokens were reused.
3. Start-up: wall time of ``preflexor-local --help`` against ``python -c pass``.

    python bench/ask_overhead.py [--rounds 3] [--max-tokens 64] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path


def run_engine(backend, rounds: int, max_tokens: int):
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
    engine = Engine(Recording(backend), sampling=sampling, recursion=Recursion(rounds=rounds))
    t0 = time.perf_counter()
    transcript = engine.run("Why is spider silk so tough?")
    return time.perf_counter() - t0, transcript, calls


def replay_raw(llm, backend, calls, repeat_penalty: float) -> float:
    t0 = time.perf_counter()
    for prompt, gen in calls:
        ids = backend.encode(prompt)
        llm.create_completion(ids, max_tokens=max(1, gen.completion_tokens), temperature=0.0, top_k=1, repeat_penalty=repeat_penalty, seed=0)
    return time.perf_counter() - t0


def startup(cmd: list[str], n: int = 5) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import llama_cpp

    from preflexor_local.backends import load
    from preflexor_local.backends.llamacpp import default_threads
    from preflexor_local.config import LoadOptions, Sampling
    from preflexor_local.models import default_model_path

    path = default_model_path()
    backend = load(str(path), LoadOptions(ctx=4096))
    raw = llama_cpp.Llama(str(path), n_ctx=4096, n_threads=default_threads(), n_threads_batch=default_threads(), verbose=False)
    rp = Sampling().repeat_penalty
    ours, theirs = [], []
    for _ in range(args.repeats):
        secs, transcript, calls = run_engine(backend, args.rounds, args.max_tokens)
        ours.append(secs)
        theirs.append(replay_raw(raw, backend, calls, rp))
    tokens = sum(g.completion_tokens for _, g in calls)
    prompt_tokens = sum(g.prompt_tokens for _, g in calls)
    ratio = min(ours) / min(theirs)

    first = transcript.rounds[0].calls[0]
    later = [r.calls[0] for r in transcript.rounds[1:]]
    ttft_later = statistics.mean(c.ttft for c in later) if later else float("nan")
    reused = sum(c.cached_tokens for c in transcript.calls)

    bin_ = Path(sys.executable).with_name("preflexor-local")
    help_s = startup([str(bin_), "--help"])
    python_s = startup([sys.executable, "-c", "pass"])

    print(f"model: {path.name}, {args.rounds} rounds, greedy, {len(calls)} calls, {tokens} generated / {prompt_tokens} prompt tokens")
    print(f"engine wall time        {min(ours):7.2f} s   (runs: {', '.join(f'{s:.2f}' for s in ours)})")
    print(f"raw llama-cpp-python    {min(theirs):7.2f} s   (same prompts, same token counts)")
    print(f"ratio engine/raw        {ratio:7.3f}     (target <= 1.05)")
    print(f"TTFT round 1 (thinking) {first.ttft:7.3f} s   prompt {first.prompt_tokens} tokens, {first.cached_tokens} cached")
    print(f"TTFT rounds 2+ (answer) {ttft_later:7.3f} s   prompts {[c.prompt_tokens for c in later]} tokens, {[c.cached_tokens for c in later]} cached")
    print(f"prompt tokens reused    {reused} of {prompt_tokens} ({100 * reused / max(1, prompt_tokens):.0f}%)")
    print(f"--help start-up         {help_s * 1000:7.0f} ms  (python -c pass: {python_s * 1000:.0f} ms)")
    backend.close()
    raw.close()


if __name__ == "__main__":
    main()
