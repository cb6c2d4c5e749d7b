"""Does an adapter's reasoner still state a key? A probe on the seed set's *training* grounded questions (never
the held-out ones), for choosing between recipe variants without looking at the items that are reported.

    python bench/reasoner_probe.py ADAPTER.gguf [--limit 12] [--seed 1]

Asks each question as the recipe's reasoner example does (its passages as context, the thinking opened by the
engine), greedy, at most 300 tokens, and counts the replies whose answer (after the thinking) says "the answer is".
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("adapter", type=Path)
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1, help="which training questions (a shuffle)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=300)
    args = ap.parse_args()
    import importlib.util

    from preflexor_local.backends import load
    from preflexor_local.backends.base import GenerationRequest
    from preflexor_local.config import LoadOptions, Sampling
    from preflexor_local.format import ThinkingFormat
    from preflexor_local.models import default_model_path

    spec = importlib.util.spec_from_file_location("demo_adapter", ROOT / "recipes" / "demo_adapter.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    fmt = ThinkingFormat()
    recs = [r for r in recipe.seed_records("train") if r["task"] == "reason" and r.get("passages")]
    random.Random(args.seed).shuffle(recs)
    model = load(str(default_model_path()), LoadOptions(chat_template=recipe.TEMPLATE, ctx=2048, adapters=(str(args.adapter),), threads=args.threads))
    stated = 0
    for rec in recs[: args.limit]:
        _, msgs, _, _ = recipe.role_examples(rec, fmt)[0]
        gen = model.generate(GenerationRequest(messages=msgs, prefill=f"{fmt.think_start}\n", sampling=Sampling(temperature=0, max_tokens=args.max_tokens)))
        ok = "answer is" in gen.text.split(fmt.think_end)[-1].lower()
        stated += ok
        print(f"{rec['id']}\t{ok}\t{gen.text[-160:]!r}", flush=True)
    model.close()
    print(f"stated a key: {stated} of {min(args.limit, len(recs))}")


if __name__ == "__main__":
    main()
