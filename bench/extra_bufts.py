"""What the AMX fallback costs: decode speed with llama.cpp's extra buffer types (CPU repack, AMX) on and off.

    python bench/extra_bufts.py                      # the default model's base GGUF, 64 tokens, 3 runs each
    python bench/extra_bufts.py --model m.gguf --tokens 16 --runs 1

Both loads go through ``open_llama`` with the choice forced, in one process, alternating, greedy from the same
prompt; prints tokens/s for each and the ratio off/on (the fallback's speed as a fraction of the default's).
"""

from __future__ import annotations

import argparse
import statistics
import time


def decode_rate(path: str, extra_bufts: bool, tokens: int, threads: int) -> float:
    from preflexor_local.backends.llamacpp_load import open_llama

    llm = open_llama(path, extra_bufts=extra_bufts, n_ctx=512, n_threads=threads, n_threads_batch=threads)
    try:
        prompt = llm.tokenize(b"The capital of France is a city that", add_bos=True)
        llm.eval(prompt)
        t0 = time.perf_counter()
        for _ in range(tokens):  # greedy, one token at a time: the decode path a reply takes
            llm.eval([int(llm.scores[llm.n_tokens - 1].argmax())])
        return tokens / (time.perf_counter() - t0)
    finally:
        llm.close()


def main(argv: list[str] | None = None) -> dict:
    from preflexor_local.backends.llamacpp import default_threads

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a GGUF file (default: the default model's base GGUF)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=default_threads())
    args = ap.parse_args(argv)
    if args.model is None:
        from preflexor_local.models import default_model_path

        args.model = str(default_model_path())
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.runs):
        for flag in (True, False):
            rates[flag].append(decode_rate(args.model, flag, args.tokens, args.threads))
    on, off = statistics.median(rates[True]), statistics.median(rates[False])
    print(f"extra buffer types on : {on:6.1f} tok/s  (median of {args.runs})")
    print(f"extra buffer types off: {off:6.1f} tok/s  (the AMX fallback)")
    print(f"ratio off/on          : {off / on:6.3f}")
    return {"on_tok_s": on, "off_tok_s": off, "ratio": off / on}


if __name__ == "__main__":
    main()
