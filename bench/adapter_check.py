"""The demo adapter's quality bar on one question, moved out of the unit tests (they keep only the format check).

One round of the default model (base + shipped adapter) at the shipped sampling settings, seeded, on a question
the adapter never saw: does the reasoner close its own thinking, with at least 15 words of it, and give a final
answer of at least 10 words? A retrained adapter may move these figures for good reasons, so this prints them
beside the bar instead of failing a test; ``bench/demo_quality.py`` measures the same over the held-out questions.

    python bench/adapter_check.py [--model SPEC] [--max-tokens 320] [--seed 0]
"""

from __future__ import annotations

import argparse
import json

QUESTION = "What role does the dentin-enamel junction play in stopping cracks that start in the outer enamel of a tooth?"
MIN_THINKING_WORDS = 15
MIN_ANSWER_WORDS = 10


def check(model: str | None, max_tokens: int, seed: int, ctx: int) -> dict:
    from preflexor_local.backends import load
    from preflexor_local.config import LoadOptions, Recursion, Sampling
    from preflexor_local.reasoning.engine import Engine

    backend = load(model, LoadOptions(ctx=ctx))
    try:
        t = Engine(backend, sampling=Sampling(max_tokens=max_tokens, seed=seed), recursion=Recursion(rounds=1)).run(QUESTION)
    finally:
        backend.close()
    r = t.rounds[0]
    out = {
        "model": backend.name,
        "thinking_closed": r.thinking_closed,
        "thinking_words": len(r.thinking.split()),
        "answer_words": len(t.final_answer.split()),
    }
    out["meets_bar"] = out["thinking_closed"] and out["thinking_words"] >= MIN_THINKING_WORDS and out["answer_words"] >= MIN_ANSWER_WORDS
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a model spec (default: the default model, base + the shipped adapter)")
    ap.add_argument("--max-tokens", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = ap.parse_args(argv)
    got = check(args.model, args.max_tokens, args.seed, args.ctx)
    if args.json:
        print(json.dumps(got))
        return got
    print(f"model: {got['model']} · {QUESTION}")
    print(f"thinking closed by the model   {'yes' if got['thinking_closed'] else 'no':>5}   (bar: yes)")
    print(f"thinking words                 {got['thinking_words']:>5}   (bar: >= {MIN_THINKING_WORDS})")
    print(f"final answer words             {got['answer_words']:>5}   (bar: >= {MIN_ANSWER_WORDS})")
    print(f"meets the bar: {'yes' if got['meets_bar'] else 'NO'}")
    return got


if __name__ == "__main__":
    main()
