"""Items per minute for the eval baselines (self-consistency and best-of-N): samples decoded as one batch against
one at a time, in one run.

Per item, the largest ``rounds-K`` run (as ``eval`` runs it: greedy, seeded, the item's key) sets the equal-token
budget once. Then the item's sample pool is drawn twice, both times from a cold cache: on the model loaded with
``--batch`` parallel slots, samples launched ``--batch`` at a time from threads (llama.cpp decodes them in one
batch per step), and on the same model loaded plainly, one at a time. Self-consistency and best-of-N (key
selector) read the same pool, so the pool's wall time is each condition's time for the item. Prints items per
minute for each condition both ways, the ratio (target >= 1.5x on 2 cores), the generated tokens per second, and
on how many items the kept samples were the same both ways (f32 models: all; quantized models may break a
near-tie the other way in a batch, see ``backends/kv_slots.py``).

    python bench/eval_batch.py [--model M] [--questions builtin:materials] [--limit 4] [--rounds 3] [--batch 4]
                               [--max-tokens 512] [--threads N]
"""

from __future__ import annotations

import argparse
import time


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model spec (default: the embedded default model)")
    ap.add_argument("--questions", default="builtin:materials")
    ap.add_argument("--limit", type=int, default=4, help="keyed items to run")
    ap.add_argument("--rounds", type=int, default=3, help="K of the rounds-K run that sets the budget")
    ap.add_argument("--batch", type=int, default=4, help="samples launched at once (parallel slots)")
    ap.add_argument("--max-tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args(argv)

    from preflexor_local.backends import load
    from preflexor_local.config import LoadOptions, Recursion, Sampling
    from preflexor_local.eval import EvalSettings, load_questions
    from preflexor_local.eval.conditions import ItemRunner, Models, rounds_name

    questions = [q for q in load_questions(args.questions).questions if q.keyed][: args.limit]
    sampling = Sampling(temperature=0, max_tokens=args.max_tokens, seed=0)
    common = dict(rounds=str(args.rounds), baselines="self-consistency,best-of-n", selector="key")
    alone = load(args.model, LoadOptions(threads=args.threads))
    batched = load(args.model, LoadOptions(threads=args.threads, parallel=args.batch))
    try:
        one = ItemRunner(Models(alone, alone, alone), EvalSettings(**common, batch=1), sampling, Recursion(), None)
        together = ItemRunner(Models(batched, batched, batched), EvalSettings(**common, batch=args.batch), sampling, Recursion(), None)
        if together.batch == 1:
            raise SystemExit(f"{batched.name} runs on {batched.kind}: its calls do not decode together (a GGUF model does)")
        times = {"batched": 0.0, "one at a time": 0.0}
        tokens = {"batched": 0, "one at a time": 0}
        same, samples = 0, []
        print(f"model: {alone.name}; {len(questions)} items of {args.questions}; budget: rounds-{args.rounds}; batch {args.batch}", flush=True)
        for i, q in enumerate(questions, 1):
            fixed_runner = ItemRunner(Models(alone, alone, alone), EvalSettings(**{**common, "baselines": "none"}), sampling, Recursion(), None)
            line = fixed_runner.run(q)
            fixed = next(r for r in line["records"] if r["condition"] == rounds_name(args.rounds))
            first = fixed["transcript"]["rounds"][0]
            estimate = sum(c["completion_tokens"] for c in first["calls"] if c["role"] == "reasoner")
            pools = {}
            for mode, runner, backend in (("batched", together, batched), ("one at a time", one, alone)):
                backend.clear_cache()  # both draws start cold
                t0 = time.perf_counter()
                recs = runner.baselines(q, fixed["tokens"], estimate)
                times[mode] += time.perf_counter() - t0
                sc = recs["self-consistency"]
                tokens[mode] += sc["tokens"] + sc.get("overshoot_tokens", 0)
                pools[mode] = sc
            kept = [[(s["seed"], s["answer"], s["tokens"]) for s in pools[m]["sample_records"]] for m in pools]
            same += kept[0] == kept[1]
            samples.append(pools["batched"]["samples"])
            print(
                f"item {i}/{len(questions)} {q.id}: budget {fixed['tokens']} tokens, {pools['batched']['samples']} samples "
                f"(batches {pools['batched']['batches']}, {pools['batched']['overshoot_tokens']} tokens dropped)",
                flush=True,
            )
        rate = {m: 60 * len(questions) / times[m] for m in times}
        print()
        print("| condition | one at a time (items/min) | batched (items/min) |")
        print("|---|---|---|")
        for cond in ("self-consistency", "best-of-n"):
            print(f"| {cond} | {rate['one at a time']:.2f} | {rate['batched']:.2f} |")
        print()
        for m in times:
            print(f"{m}: {times[m]:.1f} s for {len(questions)} items, {tokens[m]} tokens generated, {tokens[m] / times[m]:.1f} tok/s")
        dec = batched.batcher
        print(f"batch decoder: {dec.batched_tokens / max(1, dec.steps):.2f} tokens per decode step; mean {sum(samples) / len(samples):.1f} samples per item")
        print(f"same kept samples: {same} of {len(questions)} items")
        print(f"ratio (batched / one at a time, items/min): {rate['batched'] / rate['one at a time']:.2f}x")
    finally:
        alone.close()
        batched.close()


if __name__ == "__main__":
    main()
