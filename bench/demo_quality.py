"""Does the demo adapter teach the method? Base Gemma 3 270M against base + adapter, on held-out questions.

Runs ``ask --recursive 3`` (the README's first command) on the seed set's held-out
questions (``"split": "test"``, never trained on) for each model and reports,
side by side:

* thinking closed by the model itself (round 1, where the model writes it);
* answers (every round's and the final) of at least 10 words;
* leaked passages: any 8-word run of the engine's prompt wording or of the
  one-shot example (``reasoning.wording``) found in an output field (critique,
  rewrite, answer, final), counted once per field;
* garbled tags: tag-shaped fragments (``<|…``) left in those fields;
* loops (calls that ended with ``finish_reason: loop``), calls cut at the token
  limit (``length``), rewrites the engine ended where they opened a section of
  the thinking again (``restart``), and questions whose every call the model
  ended itself;
* relevance: MiniLM cosine of question and final answer (median);
* critique copying: share of a critique's word 5-grams found in the thinking it
  reviews (mean; 1.0 = a copy);
* critic instructions carried on: rewrites, and answers, holding a sentence that
  gives an order ("Add the missing details.", "Explain why …") or a review label
  ("Step 2 is wrong", "The loading is missing") — the critic's voice, not reasoning
  (share of rewrites; share of answers);
* critique uptake: of the content words a critique brings that the thinking lacked,
  the share the rewrite takes up (median; the seed set's hand-written rewrites: 0.5);
* speed: generated tokens/s over all calls, and model load time.

Each model's transcripts go to ``OUT/<label>.jsonl`` (resumed: finished
questions are not redone), the table to stdout, ``OUT/report.json``.

    python bench/demo_quality.py -o bench-out/quality [--limit 12] [--models base,adapter]
    python bench/demo_quality.py -o bench-out/candidate --models adapter --adapter candidate.gguf [--adapter more.gguf:0.5]
    python bench/demo_quality.py -o bench-out/greedy --models adapter --temperature 0 --max-tokens 200
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"base": "gemma3-270m-base", "adapter": "default"}
N_LEAK = 8
# a half-written PRefLexOR tag left in prose ("<|/thnkmkj|]", "<|///ROUTINES|>"); a real tag is not counted
GARBLED_TAG = re.compile(r"<\|[^\s<]{0,40}")
PHANTOM_CITATION = re.compile(r"\[\d{1,3}\]")  # a passage citation, as the grounded roles write them


def held_out() -> list[dict]:
    rows = []
    for path in sorted((ROOT / "recipes" / "seed").glob("part-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                if r.get("split") == "test":
                    rows.append(r)
    return rows


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def _garbled(text: str) -> int:
    from preflexor_local.format import ThinkingFormat

    real = ThinkingFormat().tags
    return sum(not m.startswith(real) for m in GARBLED_TAG.findall(text))


# A sentence (or numbered item) that starts with an instruction verb, or a review's label: the critic's voice.
_ORDER_VERBS = (
    "add name explain state replace give mention describe include remove say note fix clarify correct specify quantify "
    "define justify show use distinguish drop delete cite compare rewrite keep connect link separate support"
).split()
_SENTENCE_START = re.compile(r"(?:^|(?<=[.!?:])\s+|\n)\s*(?:\d+\.\s*)?([A-Z][a-z]+)\b")
# a label is found in 1 of the seed set's 906 hand-written reasoning and answer fields, and in 106 of its 108 reviews
_REVIEW_LABEL = re.compile(r"\bStep \d+\b(?: is \w+)?|\b(?:is|are) (?:wrong|missing|vague|unsupported|oversimplified)\b|\bMissing details?:")
_STOPWORDS = set(
    "the a an of and or to in on for is are was were be by with that this it its as at from into than then so which what when where why how "
    "not no more less can does do has have their they them there these those each any all most some such also only very about over under "
    "between through".split()
)


def critic_orders(text: str) -> int:
    """How many instructions or review labels ``text`` holds."""
    starts = sum(m.group(1).lower() in _ORDER_VERBS for m in _SENTENCE_START.finditer(text))
    return starts + len(_REVIEW_LABEL.findall(text))


def _content(text: str) -> set[str]:
    return {w for w in _words(text) if len(w) > 3 and w not in _STOPWORDS}


def uptake(thinking: str, critique: str, rewrite: str) -> float | None:
    """Share of the content words the critique adds to the thinking that the rewrite uses (None: it adds none)."""
    new = _content(critique) - _content(thinking)
    return len(new & _content(rewrite)) / len(new) if new else None


def _grams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def leak_grams() -> set[tuple[str, ...]]:
    """8-word runs of every prompt and example text the engine shows a model (not the question itself)."""
    from preflexor_local.reasoning import wording

    texts = [
        wording.CRITIQUE,
        wording.REWRITE,
        wording.INTEGRATE,
        wording.CONTEXT,
        wording.CRITIC_SYSTEM,
        wording.INTEGRATOR_SYSTEM,
        wording._EX_QUESTION,
        wording._EX_THINKING,
        wording._EX_WEAK_THINKING,
        wording._EX_CRITIQUE,
        wording._EX_ANSWER,
        *wording._EX_DRAFTS,
    ]
    out: set[tuple[str, ...]] = set()
    for t in texts:
        for part in re.split(r"\{[a-z]+\}", t):  # the template's own words, not what fills it
            out |= _grams(_words(part), N_LEAK)
    return out


def run_model(
    label: str,
    spec: str,
    questions: list[dict],
    out: Path,
    rounds: int,
    report_only: bool = False,
    overrides: dict | None = None,
    adapters: tuple = (),
    seed: int = 0,
) -> dict:
    from preflexor_local.backends import load
    from preflexor_local.config import LoadOptions, Recursion, Sampling
    from preflexor_local.jsonl import Appender, whole_rows
    from preflexor_local.reasoning.engine import Engine

    path = out / f"{label}.jsonl"
    done = {rec["id"]: rec for rec in whole_rows(path) if "id" in rec}
    if report_only:  # figures from the transcripts already written (e.g. by several processes with --start)
        return {"load_s": None, "records": [done[q["id"]] for q in questions if q["id"] in done]}
    t0 = time.perf_counter()
    backend = load(spec, LoadOptions(adapters=adapters))
    load_s = time.perf_counter() - t0
    # the README command's settings (temperature 0.1, DRY 0.8), seeded; --dry-multiplier, --temperature and
    # --max-tokens override them for every model
    sampling = Sampling(seed=seed, **(overrides or {}))
    with Appender(path) as fh:
        for i, q in enumerate(questions, 1):
            if q["id"] in done:
                continue
            t = Engine(backend, sampling=sampling, recursion=Recursion(rounds=rounds)).run(q["question"])
            rec = {"id": q["id"], "question": q["question"], "transcript": json.loads(t.to_json())}
            fh.append(rec)
            done[q["id"]] = rec
            print(f"{label}: {i}/{len(questions)}", file=sys.stderr, flush=True)
    backend.close()
    return {"load_s": load_s, "records": [done[q["id"]] for q in questions if q["id"] in done]}


def measure(records: list[dict], leaks: set, embed) -> dict:
    closed = answers_ok = answers = leaked = garbled = loops = at_limit = restarts = ended_all = calls = gen_tokens = 0
    gen_seconds = 0.0
    copy, rel, took = [], [], []
    rewrites = ordered_rewrites = ordered_answers = phantom = 0
    for rec in records:
        t = rec["transcript"]
        rounds = t["rounds"]
        closed += bool(rounds and rounds[0]["thinking_closed"])
        texts = [r["answer"] for r in rounds] + [t["final_answer"]]
        answers += len(texts)
        answers_ok += sum(len(_words(a)) >= 10 for a in texts)
        ordered_answers += sum(critic_orders(a) > 0 for a in texts)
        fields = texts + [r.get("critique") or "" for r in rounds] + [r.get("improved_thinking") or "" for r in rounds]
        leaked += sum(bool(_grams(_words(f), N_LEAK) & leaks) for f in fields if f)
        garbled += sum(_garbled(f) for f in fields if f)
        if not t.get("context"):  # no passage was given: a "[1]" cites nothing
            phantom += bool(PHANTOM_CITATION.search(t["final_answer"] or ""))
        own = [c for r in rounds for c in r["calls"]] + ([t["integration"]] if t.get("integration") else [])
        for c in own:
            calls += 1
            loops += c["finish_reason"] == "loop"
            at_limit += c["finish_reason"] == "length"
            restarts += c["finish_reason"] == "restart"
            gen_tokens += c["completion_tokens"]
            gen_seconds += max(c["seconds"] - (c["ttft"] or 0.0), 0.0)
        ended_all += all(c["finish_reason"] in ("eos", "stop") for c in own)
        for r in rounds:
            if r.get("critique") and r.get("critique_source") == "critic":
                cg = _grams(_words(r["critique"]), 5)
                if cg:
                    copy.append(len(cg & _grams(_words(r["thinking"]), 5)) / len(cg))
            if r.get("improved_thinking"):
                rewrites += 1
                ordered_rewrites += critic_orders(r["improved_thinking"]) > 0
                u = uptake(r["thinking"], r.get("critique") or "", r["improved_thinking"])
                if u is not None:
                    took.append(u)
        q, a = embed([rec["question"], t["final_answer"] or "-"])
        rel.append(float(q @ a))
    n = len(records)
    return {
        "questions": n,
        "thinking_closed": closed / n if n else None,
        "answers_10_words": answers_ok / answers if answers else None,
        "leaked_passages": leaked,
        "garbled_tags": garbled,
        "loops": loops,
        "token_limit": at_limit,
        "restarted_sections": restarts,
        "questions_all_ended_by_model": ended_all,
        "calls": calls,
        "relevance_median": statistics.median(rel) if rel else None,
        "critique_copy_mean": statistics.fmean(copy) if copy else None,
        "rewrites_with_critic_orders": ordered_rewrites / rewrites if rewrites else None,
        "answers_with_critic_orders": ordered_answers / answers if answers else None,
        "critique_uptake_median": statistics.median(took) if took else None,
        "final_answers_citing_no_passage": phantom,
        "gen_tokens_mean": gen_tokens / n if n else None,
        "gen_tokens_per_s": gen_tokens / gen_seconds if gen_seconds else None,
    }


def speed(repeats: int = 3, tokens: int = 128) -> dict:
    """Load time and generation tok/s of base vs base + adapter: same prompt, greedy, same token count."""
    from preflexor_local.backends import GenerationRequest, load
    from preflexor_local.config import LoadOptions, Sampling

    req = GenerationRequest(
        messages=[{"role": "user", "content": "Describe how nacre stops cracks."}],
        sampling=Sampling(temperature=0, max_tokens=tokens, seed=0, stop_repeats=False),
    )
    out = {}
    for label, spec in MODELS.items():
        loads, rates = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            b = load(spec, LoadOptions(chat_template="plain"))  # one format for both: the comparison is the adapter's cost
            loads.append(time.perf_counter() - t0)
            gen = b.generate(req)
            rates.append(gen.tokens_per_second)
            b.close()
        out[label] = {"load_s": min(loads), "gen_tokens_per_s": max(rates)}
    out["adapter_cost"] = 1 - out["adapter"]["gen_tokens_per_s"] / out["base"]["gen_tokens_per_s"]
    return out


def embedder():
    from preflexor_local.rag.embed import load_embedder

    return load_embedder(None).encode  # unit vectors: the dot product is the cosine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--out", type=Path, default=ROOT / "bench-out" / "quality")
    ap.add_argument("--limit", type=int, default=None, help="stop before held-out question N (alone: the first N)")
    ap.add_argument("--start", type=int, default=0, help="skip the first K (to split the work across processes)")
    ap.add_argument("--models", default="base,adapter")
    ap.add_argument("--model", default=None, help="a model spec to run under each label of --models, in place of its own (e.g. a small GGUF, to try the bench)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (a second seed shows the noise)")
    ap.add_argument("--report-only", action="store_true", help="no generation: report on the transcripts already in OUT")
    ap.add_argument("--speed", action="store_true", help="only the speed comparison (load time, tok/s)")
    ap.add_argument("--dry-multiplier", type=float, default=None, help="DRY strength for both models (default: the shipped default; 0 = off)")
    ap.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: the shipped one; 0 = greedy)")
    ap.add_argument("--max-tokens", type=int, default=None, help="most tokens per call (default: the shipped limit)")
    ap.add_argument(
        "--adapter",
        action="append",
        default=[],
        help="a candidate LoRA GGUF, FILE or FILE:SCALE, in place of the shipped one (the 'adapter' model); repeat for several",
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.speed:
        print(json.dumps(speed(), indent=2))
        return
    questions = held_out()[args.start : args.limit]
    leaks, embed = leak_grams(), embedder()
    report = {}
    for label in args.models.split(","):
        adapters = tuple(args.adapter) if label == "adapter" else ()
        overrides = {"dry_multiplier": args.dry_multiplier, "temperature": args.temperature, "max_tokens": args.max_tokens}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        res = run_model(label, args.model or MODELS[label], questions, args.out, args.rounds, args.report_only, overrides, adapters, args.seed)
        report[label] = {**measure(res["records"], leaks, embed), "load_s": None if res["load_s"] is None else round(res["load_s"], 3)}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    keys = [
        "questions",
        "thinking_closed",
        "answers_10_words",
        "leaked_passages",
        "garbled_tags",
        "loops",
        "token_limit",
        "restarted_sections",
        "questions_all_ended_by_model",
        "relevance_median",
        "critique_copy_mean",
        "rewrites_with_critic_orders",
        "answers_with_critic_orders",
        "critique_uptake_median",
        "final_answers_citing_no_passage",
        "gen_tokens_mean",
        "gen_tokens_per_s",
        "load_s",
    ]
    labels = list(report)
    print("| metric | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    for k in keys:
        cells = []
        for lab in labels:
            v = report[lab].get(k)
            cells.append("-" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v))
        print(f"| {k} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
