"""Rebuild the demo adapter: Gemma 3 270M (base) taught the PRefLexOR roles with the project's own pipeline.

    python recipes/demo_adapter.py --work ~/demo-run            # every stage; rerun to resume
    python recipes/demo_adapter.py --work ~/demo-run --stage pairs

Stages (each skips what is already done, so the script resumes after a crash
or across sittings):

1. **base**: ``convert hf`` of the embedded GGUF -> a trainable fp32 checkpoint.
2. **pairs**: every training record of the seed set (``recipes/seed/*.jsonl``,
   held-out items excluded) becomes role examples rendered with the engine's own
   prompt wording (``reasoning.wording``): the reasoner (question -> thinking ->
   answer; and, with the thinking pre-filled as reflect mode does, reflection ->
   answer where the record has one), the critic's
   review, the critic's rewrite along a review, and the integrator. *chosen* is
   the seed text; *rejected* is the base model's own reply to the same prompt
   (the GGUF under llama.cpp, the Gemma chat format), as PRefLexOR's Phase I
   does. Pairs are appended one by one, so a killed run loses at most one.
3. **train**: ``train orpo`` on those pairs (LoRA r=16 on the top 8 blocks,
   tags kept as plain text so the adapter fits the base vocabulary), the Gemma
   chat template, the end-of-turn label weighted (``--end-weight``: the base
   model has never ended a turn), rounds checkpointed (``--resume``).
4. **export**: ``convert lora-gguf`` -> ``adapter.gguf`` for llama.cpp, and the
   chat format it was trained with recorded beside it.

Phase II (run by the default ``--stage all`` after export, or alone with ``--stage phase2``; each step resumes):

5. **phase2-pairs**: the Phase I adapter's own rewrite of every training
   ``refine`` record's reasoning along its review, as it writes it at inference
   (base GGUF + ``adapter.gguf``, the engine's default sampling), is *rejected*;
   the seed's rewrite is *chosen*. The adapter carries the review's orders
   ("Add the missing details.") into its rewrites, and from there into its
   answers; the seed's rewrites act on them. ``--phase2-roles critique,rewrite``
   also makes review pairs (rejected = the adapter's own review).
6. **phase2-train**: ``train orpo`` (``--phase2-method``; ``exo`` is the method's
   DPO-family loss) with a new LoRA on the merged Phase I model, 14 steps.
7. **phase2-export**: the two LoRAs as one, ranks stacked (exact, below), then
   ``convert lora-gguf`` -> ``adapter-phase2.gguf``: the shipped ``demo-adapter.gguf``. Its rewrites that
   start their layout over are ended by the engine (``format.rewrite_frame``); see the README.

   Measured (``bench/results/demo-quality-phase2.json``): EXO made the critic
   stop ending its turns (nothing in its loss keeps the chosen reply likely);
   ORPO's NLL term does. Review pairs, and scoring the rejected replies without
   their end of turn, both measured worse and are off.

Continued training (``--stage continue``; the pairs of stage 2 must exist):

8. **continue**: Phase I continued from the shipped adapter rather than from the base: ``convert lora-peft``
   turns ``demo-adapter.gguf`` (Phase I + II) back into a PEFT folder, ``convert merge`` folds it into the base,
   and ``train orpo`` fits a new LoRA (same blocks, ``--continue-lr``) on every grounded pair (records with
   passages) plus ``--replay`` older pairs drawn at random, so the roles learnt before stay in the loss. Exported
   stacked on the shipped adapter (``stack_loras``, exact) -> ``adapter-continue.gguf``. A from-scratch Phase I
   over all 914 pairs is about 460 steps (2.5 h or more on 2 cores); this is about 150 (35 min).
9. **continue-phase2**: Phase II on that adapter, as in steps 5-7: *rejected* = ``adapter-continue.gguf``'s own
   review (``--phase2-roles critique,rewrite``: the critic's verdict is what it has to learn) and rewrite of every
   grounded training ``refine`` record, with its passages as evidence; a new LoRA on it merged (``convert
   lora-peft`` + ``convert merge``), stacked on it -> ``adapter-continue-phase2.gguf``. ``--phase2-replay N``
   mixes in N Phase I reasoner pairs of the grounded records (-> ``adapter-continue-phase2-rN.gguf``): trained on
   the critic's roles alone, the shared LoRA also moved the reasoner.

Wall time on a 2-core CPU: see docs/demo-model.md.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

from preflexor_local.jsonl import Appender, whole_rows

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "recipes" / "seed"
TEMPLATE = "gemma"


def question_text(rec: dict) -> str:
    """The question as the engine is asked it: a keyed one with its lettered options and how to state the answer
    (eval's ``Question.prompt``, what ``eval`` sends), an open one as written."""
    from preflexor_local.eval.questions import Question

    kind = rec.get("kind", "open")
    if kind == "open":
        return rec["question"]
    return Question(rec["id"], rec["question"], kind, None, tuple(rec["choices"]) if rec.get("choices") else None).prompt()


def role_examples(rec: dict, fmt) -> list[tuple[str, list[dict], str, str]]:
    """(role, messages, prefill, chosen) for one seed record, built by the engine's own call frames
    (``reasoning.frames``: the same messages and pre-fills as at inference, the guards on as for the embedded model).

    A record's passages are the reasoner's context and the critic's evidence. A review without a verdict line
    (the older records, whose thinking always has flaws) gets "Verdict: fix.", as the critic prompt asks; a
    review of nothing to fix has no rewrite.
    """
    from preflexor_local.format import critic_verdict
    from preflexor_local.reasoning.frames import FRAMES, Context, Guards

    passages = tuple(rec.get("passages") or ())
    ctx = Context(fmt=fmt, question=question_text(rec), guards=dict.fromkeys(("reasoner", "critic", "integrator"), Guards(True)), chunks=passages)
    if rec["task"] == "reason":
        msgs = ctx.reasoner_messages()
        think = f"{fmt.think_start}\n{rec['thinking'].strip()}\n{fmt.think_end}\n"
        out = [("reasoner", msgs, "", think + rec["answer"].strip())]
        if rec.get("reflection"):
            # Reflect mode: the engine pre-fills the closed thinking and the opening reflection tag, so
            # the model learns to reflect there without learning to open a reflection on its own.
            out.append(("reflection", msgs, think + f"{fmt.reflect_start}\n", f"{rec['reflection'].strip()}\n{fmt.reflect_end}\n{rec['answer'].strip()}"))
        return out
    if rec["task"] == "refine":
        weak, review = rec["weak_thinking"].strip(), rec["critique"].strip()
        if critic_verdict(review) is None:
            review += "\nVerdict: fix."
        out = [("critique", FRAMES["critique"].build(ctx, thinking=weak, passages=passages).messages, "", review)]
        if rec.get("improved_thinking"):
            plan = FRAMES["rewrite"].build(ctx, thinking=weak, feedback=review, passages=passages)
            improved = rec["improved_thinking"].strip()
            prefill = plan.prefill if improved.startswith(plan.prefill) else ""
            out.append(("rewrite", plan.messages, prefill, improved[len(prefill) :]))
        return out
    if rec["task"] == "integrate":
        plan = FRAMES["integration"].build(ctx, answers=rec["drafts"], thinkings=[])
        return [("integrate", plan.messages, "", rec["final"].strip())]
    raise ValueError(f"unknown task {rec['task']!r}")


def seed_records(split: str) -> list[dict]:
    rows = []
    for path in sorted(SEED.glob("part-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                if (rec.get("split") == "test") == (split == "test"):
                    rows.append(rec)
    return rows


def run(*args: str) -> None:
    print("+ preflexor-local " + " ".join(args), file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "preflexor_local", *args], check=True)


def stage_base(work: Path) -> Path:
    from preflexor_local.models import default_model_path

    out = work / "gemma-hf"
    if not (out / "config.json").is_file():
        run("convert", "hf", str(default_model_path()), "-o", str(out))
    return out


def done_keys(path: Path) -> set[str]:
    """The pairs already written (``meta.key``): a rerun does only the rest (a torn last line is not one)."""
    return {row["meta"]["key"] for row in whole_rows(path) if isinstance(row.get("meta"), dict) and "key" in row["meta"]}


def drop_stale(path: Path, current: dict[str, tuple]) -> set[str]:
    """Remove the pairs whose prompt, pre-fill or chosen reply no longer match the seed set and prompts (a record or
    the engine's wording changed since they were made): they are redone. Returns the keys of the pairs kept."""
    from preflexor_local.atomic import write_bytes

    rows = list(whole_rows(path))
    keep = []
    for row in rows:
        ex = current.get(row.get("meta", {}).get("key"))
        if ex is not None and (row["prompt"], row.get("prefill", ""), row["chosen"]) == (ex[1], ex[2], ex[3]):
            keep.append(row)
    if len(keep) < len(rows):
        print(f"pairs: {len(rows) - len(keep)} made from an older seed set or wording: redone", file=sys.stderr, flush=True)
        write_bytes(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep).encode("utf-8"))
    return {r["meta"]["key"] for r in keep}


def stage_pairs(work: Path, rejected_tokens: int, seed: int) -> Path:
    """Append (chosen = seed, rejected = base model's own reply) pairs; resumes by id."""
    from preflexor_local.backends import load
    from preflexor_local.backends.base import GenerationRequest
    from preflexor_local.config import LoadOptions, Sampling
    from preflexor_local.format import ThinkingFormat
    from preflexor_local.models import default_model_path

    out = work / "pairs.jsonl"
    fmt = ThinkingFormat()
    todo = [(rec, ex) for rec in seed_records("train") for ex in role_examples(rec, fmt)]
    done = drop_stale(out, {f"{rec['id']}:{ex[0]}": ex for rec, ex in todo})
    random.Random(seed).shuffle(todo)  # any prefix of the work is a fair sample of roles and domains
    # the grounded records (passages) first: the part of the set the current adapter has never seen
    todo.sort(key=lambda item: not item[0].get("passages"))
    todo = [(rec, ex) for rec, ex in todo if f"{rec['id']}:{ex[0]}" not in done]
    print(f"pairs: {len(done)} done, {len(todo)} to go", file=sys.stderr, flush=True)
    if not todo:
        return out
    base = load(str(default_model_path()), LoadOptions(chat_template=TEMPLATE, ctx=2048))
    # The base model's own replies as they were sampled for the shipped adapter: repeat penalty 1.1, no DRY.
    sampling = Sampling(temperature=0.8, top_p=0.95, max_tokens=rejected_tokens, seed=seed, dry_multiplier=0.0)
    with Appender(out) as fh:
        for i, (rec, (role, msgs, prefill, chosen)) in enumerate(todo, 1):
            # The reasoner starts inside an opened thinking section, as the engine prefills it.
            start = f"{fmt.think_start}\n" if role == "reasoner" else ""
            gen = base.generate(GenerationRequest(messages=msgs, prefill=prefill + start, sampling=sampling))
            row = {
                "prompt": msgs,
                "chosen": chosen,
                "rejected": start + gen.text.strip(),
                "meta": {"key": f"{rec['id']}:{role}", "role": role, "domain": rec.get("domain")},
            }
            if prefill:
                row["prefill"] = prefill
            if gen.finish_reason == "length":
                row["rejected_cut"] = True  # cut by the token limit: trained without an end of turn
            fh.append(row)
            if i % 20 == 0:
                print(f"pairs: {len(done) + i}/{len(done) + len(todo)}", file=sys.stderr, flush=True)
    base.close()
    return out


def train_run(method: str, model: Path, pairs: Path, run_dir: Path, epochs: float, lr: float, args, *extra: str, max_steps: int | None = None) -> Path:
    """``train METHOD`` on ``pairs`` in rounds of ``--round-steps`` (each checkpointed), resumed when ``run_dir`` holds a run.

    What both phases share: LoRA r=16 on the top blocks, tags as plain text, embeddings frozen, the Gemma template.
    """
    n = sum(1 for _ in pairs.open(encoding="utf-8"))
    total = max(1, round(epochs * n / (args.batch_size * args.grad_accum)))
    if max_steps:
        total = min(total, max_steps)
    rounds = max(1, -(-total // args.round_steps))
    cmd = [
        *("train", method, "--model", str(model), "--data", str(pairs), "-o", str(run_dir)),
        *("--chat-template", TEMPLATE, "--tag-tokens", "plain", "--freeze-embeddings", "--rank", "16", "--alpha", "32"),
        *("--lr", str(lr), "--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum)),
        *("--rounds", str(rounds), "--steps-per-round", str(-(-total // rounds)), "--max-length", "768"),
        *("--target-modules", args.target_modules, "--seed", str(args.seed), "--no-merge", *extra),
    ]
    if (run_dir / "run.json").is_file() or (run_dir / "rounds").is_dir():
        cmd.append("--resume")
    run(*cmd)
    return run_dir


def stage_train(work: Path, base: Path, pairs: Path, args) -> Path:
    extra = ("--beta", "0.1", "--end-weight", str(args.end_weight))
    return train_run("orpo", base, pairs, work / "run", args.epochs, args.lr, args, *extra, max_steps=args.max_steps)


def stage_export(work: Path, run_dir: Path) -> Path:
    return export_gguf(run_dir / "adapter", work / "adapter.gguf")


def export_gguf(adapter: Path, out: Path, *extra: str) -> Path:
    """``convert lora-gguf`` onto the embedded base, q8_0, with the chat format the adapter was trained in."""
    from preflexor_local.models import default_model_path

    run("convert", "lora-gguf", str(adapter), "--base", str(default_model_path()), "-o", str(out), "--outtype", "q8_0", "--chat-template", TEMPLATE, *extra)
    return out


def phase2_examples(fmt, roles: tuple[str, ...], grounded_only: bool) -> list[tuple[dict, tuple]]:
    """(record, role example) for every training refine record (with passages only, if ``grounded_only``) and role in ``roles``."""
    records = [rec for rec in seed_records("train") if rec["task"] == "refine" and (rec.get("passages") or not grounded_only)]
    return [(rec, ex) for rec in records for ex in role_examples(rec, fmt) if ex[0] in roles]


def stage_phase2_pairs(work: Path, seed: int, roles: tuple[str, ...], adapter: Path, out: Path, grounded_only: bool = False) -> Path:
    """(chosen = the seed's reply, rejected = ``adapter``'s own) for every training refine record (with passages only
    when ``grounded_only``) and critic role, appended to ``out``."""
    from preflexor_local.backends import load
    from preflexor_local.backends.base import GenerationRequest
    from preflexor_local.config import LoadOptions, Sampling
    from preflexor_local.format import ThinkingFormat
    from preflexor_local.models import default_model_path

    done = done_keys(out)  # every role's pairs; training reads those of --phase2-roles (phase2_training_set)
    fmt = ThinkingFormat()
    todo = [(rec, ex) for rec, ex in phase2_examples(fmt, roles, grounded_only) if f"{rec['id']}:{ex[0]}" not in done]
    print(f"phase2 pairs: {len(done)} done, {len(todo)} to go", file=sys.stderr, flush=True)
    if not todo:
        return out
    model = load(str(default_model_path()), LoadOptions(chat_template=TEMPLATE, ctx=2048, adapters=(str(adapter),)))
    sampling = Sampling(seed=seed, max_tokens=384)  # what the engine asks of the model at inference (DRY on)
    with Appender(out) as fh:
        for i, (rec, (role, msgs, prefill, chosen)) in enumerate(todo, 1):
            gen = model.generate(GenerationRequest(messages=msgs, prefill=prefill, sampling=sampling))
            row = {
                "prompt": msgs,
                "chosen": chosen,
                "rejected": gen.text.strip(),
                "meta": {"key": f"{rec['id']}:{role}", "role": role, "domain": rec.get("domain")},
            }
            if prefill:  # the rewrite's opening heading, pre-filled as the engine does
                row["prefill"] = prefill
            if gen.finish_reason == "length":
                row["rejected_cut"] = True
            fh.append(row)
            if i % 10 == 0:
                print(f"phase2 pairs: {len(done) + i}/{len(done) + len(todo)}", file=sys.stderr, flush=True)
    model.close()
    return out


def phase2_training_set(pairs: Path, roles: tuple[str, ...]) -> Path:
    """The pairs of ``roles`` only, in file order: the pair file may also hold another role's from an earlier run."""
    rows = [line for line in pairs.read_text(encoding="utf-8").splitlines() if line.strip() and json.loads(line)["meta"]["role"] in roles]
    out = pairs.with_name(f"{pairs.stem}-{'+'.join(roles)}.jsonl")
    out.write_text("".join(line + "\n" for line in rows), encoding="utf-8")
    return out


# Phase II losses. EXO (the method's) scores against Phase I and nothing else keeps the chosen reply likely;
# ORPO adds the chosen reply's NLL, with the end-of-turn label weighted as in Phase I.
PHASE2_METHODS = {
    "exo": lambda args: ("dpo", "--no-mask-thinking"),  # a rewrite is reasoning written without tags: score every token
    "orpo": lambda args: ("orpo", "--beta", "0.1", "--end-weight", str(args.end_weight)),
}


def merged_phase1(work: Path, base: Path, phase1: Path, name: str = "phase1-merged") -> Path:
    """``phase1`` merged into the base, once, as ``WORK/name``; the adapter it came from is recorded and must match on
    every rerun.

    The next LoRA trains on this model and is exported stacked on ``phase1``: stacked on another adapter (a later
    round, a default that pointed elsewhere) it would apply a correction to a model it never saw.
    """
    merged = work / name
    source = merged / "phase1-source.json"
    want = {"phase1": str(phase1.resolve())}
    if (merged / "config.json").is_file():
        had = json.loads(source.read_text()) if source.is_file() else {"phase1": "(not recorded)"}
        if had != want:
            raise SystemExit(f"{merged} was merged from {had['phase1']}, not {want['phase1']}: pass --phase1 {had['phase1']}, or delete {merged}")
        return merged
    run("convert", "merge", str(base), str(phase1), "-o", str(merged))
    source.write_text(json.dumps(want))
    return merged


def stage_phase2_train(work: Path, base: Path, phase1: Path, pairs: Path, args, prefix: str = "", suffix: str = "") -> Path:
    """A new LoRA on ``phase1`` merged into the base (``WORK/PREFIXphase1-merged``), in ``WORK/PREFIXphase2-METHODSUFFIX``."""
    merged = merged_phase1(work, base, phase1, name=f"{prefix}phase1-merged")
    method, *extra = PHASE2_METHODS[args.phase2_method](args)
    run_dir = work / f"{prefix}phase2-{args.phase2_method}{suffix}"
    return train_run(method, merged, pairs, run_dir, args.phase2_epochs, args.phase2_lr, args, *extra, max_steps=args.phase2_max_steps)


def stack_loras(first: Path, second: Path, out: Path) -> Path:
    """Two PEFT LoRAs on the same modules as one: the second was trained on the first merged into the base.

    For each module, ``dW = s1 B1 A1 + s2 B2 A2 = [s1 B1 | s2 B2] @ [A1 ; A2]`` (``s = alpha / r``), so a LoRA of
    rank ``r1 + r2`` with ``alpha = r1 + r2`` (scale 1) and the scales folded into B applies both exactly.
    """
    import torch
    from safetensors.torch import load_file, save_file

    cfgs = [json.loads((d / "adapter_config.json").read_text()) for d in (first, second)]
    for d, c in zip((first, second), cfgs):
        for key in ("use_rslora", "use_dora", "rank_pattern", "alpha_pattern"):
            if c.get(key):
                raise SystemExit(f"stack_loras: {d} sets {key}; only plain LoRA (one rank, scale alpha / r) is stacked")
    tensors = [load_file(str(d / "adapter_model.safetensors")) for d in (first, second)]
    keys = [{k for k in t if ".lora_A." in k} for t in tensors]
    if keys[0] != keys[1]:
        raise SystemExit(f"stack_loras: {first} and {second} wrap different modules; train Phase II with the same --target-modules")
    scales = [c["lora_alpha"] / c["r"] for c in cfgs]
    merged = {}
    for a_key in sorted(keys[0]):
        b_key = a_key.replace(".lora_A.", ".lora_B.")
        merged[a_key] = torch.cat([tensors[0][a_key], tensors[1][a_key]], dim=0).contiguous()
        merged[b_key] = torch.cat([tensors[0][b_key] * scales[0], tensors[1][b_key] * scales[1]], dim=1).contiguous()
    out.mkdir(parents=True, exist_ok=True)
    rank = cfgs[0]["r"] + cfgs[1]["r"]
    cfg = {**cfgs[0], "r": rank, "lora_alpha": rank, "rank_pattern": {}, "alpha_pattern": {}}
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    save_file(merged, str(out / "adapter_model.safetensors"))
    return out


def stage_phase2_export(work: Path, phase1: Path, phase2_adapter: Path) -> Path:
    both = stack_loras(phase1, phase2_adapter, work / "phase1+2")
    return export_gguf(both, work / "adapter-phase2.gguf", "--force")


def peft_of(adapter: Path, base: Path, out: Path) -> Path:
    """A LoRA GGUF as a PEFT folder for ``base`` (``convert lora-peft``), made once."""
    if not (out / "adapter_config.json").is_file():
        run("convert", "lora-peft", str(adapter), "--base", str(base), "-o", str(out), "--force")
    return out


def shipped_peft(work: Path, base: Path) -> Path:
    """The shipped adapter (``demo-adapter.gguf``, Phase I + II) as a PEFT folder for ``base``."""
    from preflexor_local.models import demo_adapter_path

    return peft_of(demo_adapter_path(), base, work / "shipped-peft")


def with_replay(new: list[dict], pool: list[dict], replay: int, seed: int, out: Path) -> Path:
    """``new`` and ``replay`` pairs of ``pool`` drawn at random, shuffled, written to ``out``.

    The pool's pairs keep the behaviour they taught in the loss while the new ones are learnt (a replay share): one
    LoRA serves every role, so training some roles moves the others.
    """
    rng = random.Random(seed)
    replayed = rng.sample(pool, min(replay, len(pool)))
    mixed = new + replayed
    rng.shuffle(mixed)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mixed), encoding="utf-8")
    print(f"{out.name}: {len(new)} new pairs + {len(replayed)} replayed", file=sys.stderr, flush=True)
    return out


def grounded_ids() -> set[str]:
    return {rec["id"] for rec in seed_records("train") if rec.get("passages")}


def record_id(row: dict) -> str:
    """The seed record a pair was made from (its key is ``RECORD:ROLE``)."""
    return row["meta"]["key"].split(":")[0]


def continue_training_set(work: Path, pairs: Path, replay: int, seed: int) -> Path:
    """Every pair of a grounded record (one with passages) and ``replay`` older ones drawn at random, shuffled."""
    ids = grounded_ids()
    rows = list(whole_rows(pairs))
    new = [r for r in rows if record_id(r) in ids]
    old = [r for r in rows if record_id(r) not in ids]
    return with_replay(new, old, replay, seed, work / "pairs-continue.jsonl")


def stage_continue(work: Path, pairs: Path, args) -> Path:
    """Phase I continued from the shipped adapter on the grounded pairs: a new LoRA on the shipped model merged,
    exported stacked on the shipped one (``stack_loras``, exact) -> ``adapter-continue.gguf``."""
    base = stage_base(work)
    shipped = shipped_peft(work, base)
    merged = merged_phase1(work, base, shipped, name="shipped-merged")
    extra = ("--beta", "0.1", "--end-weight", str(args.end_weight))
    run_dir = train_run(
        "orpo",
        merged,
        continue_training_set(work, pairs, args.replay, args.seed),
        work / "continue",
        args.epochs,
        args.continue_lr,
        args,
        *extra,
        max_steps=args.max_steps,
    )
    both = stack_loras(shipped, run_dir / "adapter", work / "shipped+continue")
    return export_gguf(both, work / "adapter-continue.gguf", "--force")


def stage_continue_phase2(work: Path, seed: int, roles: tuple[str, ...], args) -> Path:
    """Phase II on the continued adapter (``adapter-continue.gguf``): rejected = its own reviews and rewrites of the
    grounded refine records; a new LoRA on it merged, stacked on it -> ``adapter-continue-phase2.gguf``."""
    adapter = work / "adapter-continue.gguf"
    if not adapter.is_file():
        raise SystemExit(f"{adapter} not found: run --stage continue first")
    pairs = phase2_training_set(stage_phase2_pairs(work, seed, roles, adapter, work / "pairs-continue-phase2.jsonl", grounded_only=True), roles)
    suffix = f"-r{args.phase2_replay}" if args.phase2_replay else ""
    if args.phase2_replay:
        ids = grounded_ids()
        pool = [r for r in whole_rows(work / "pairs.jsonl") if r["meta"]["role"] == "reasoner" and record_id(r) in ids]
        pairs = with_replay(list(whole_rows(pairs)), pool, args.phase2_replay, seed, pairs.with_name(f"{pairs.stem}{suffix}.jsonl"))
    base = stage_base(work)
    phase1 = peft_of(adapter, base, work / "continue-peft")
    run_dir = stage_phase2_train(work, base, phase1, pairs, args, prefix="continue-", suffix=suffix)
    both = stack_loras(phase1, args.phase2_round or run_dir / "adapter", work / f"continue+phase2{suffix}")
    return export_gguf(both, work / f"adapter-continue-phase2{suffix}.gguf", "--force")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="working folder (checkpoints, pairs, run)")
    ap.add_argument("--stage", choices=("all", "base", "pairs", "train", "export", "phase2", "continue", "continue-phase2"), default="all")
    ap.add_argument("--phase1", type=Path, default=None, help="Phase I adapter Phase II starts from (default: WORK/run/adapter)")
    ap.add_argument("--phase2-roles", default="rewrite", help="critic roles Phase II pairs are made for: rewrite, critique or both")
    ap.add_argument("--phase2-method", choices=sorted(PHASE2_METHODS), default="orpo")
    ap.add_argument("--phase2-epochs", type=float, default=1.0)
    ap.add_argument("--phase2-max-steps", type=int, default=14, help="cap on Phase II optimizer steps (the 14 measured in the README)")
    ap.add_argument("--phase2-lr", type=float, default=1e-4)
    ap.add_argument("--phase2-round", type=Path, default=None, help="Phase II checkpoint to export (default: WORK/phase2-METHOD/adapter)")
    ap.add_argument(
        "--phase2-replay",
        type=int,
        default=0,
        help="--stage continue-phase2: Phase I reasoner pairs of the grounded records mixed in (the reasoner shares the LoRA)",
    )
    ap.add_argument("--replay", type=int, default=64, help="--stage continue: older (ungrounded) pairs mixed in with the grounded ones")
    ap.add_argument("--continue-lr", type=float, default=2e-4, help="--stage continue: learning rate of the new LoRA")
    ap.add_argument("--rejected-tokens", type=int, default=96, help="most tokens of each rejected reply")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=None, help="cap on optimizer steps (a CPU budget)")
    ap.add_argument("--round-steps", type=int, default=20, help="optimizer steps per checkpointed round")
    ap.add_argument("--lr", type=float, default=3e-4)
    # The base model has never produced <end_of_turn>: one label in ~200, it was learnt too slowly
    # (p ~ 0.001 at the end of training replies after 160 steps) and the adapter's answers ran on.
    ap.add_argument("--end-weight", type=float, default=8.0, help="weight of the end-of-turn label in the NLL")
    # The top 8 of Gemma 3 270M's 18 blocks: autograd then stops below block 10, which cuts the
    # backward pass by more than half on a CPU; format and role behaviour are learnt there.
    ap.add_argument("--target-modules", default=r"re:.*layers\.(1[0-7])\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--grad-accum", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    random.seed(args.seed)
    roles = tuple(r for r in args.phase2_roles.split(",") if r)
    if not roles or set(roles) - {"critique", "rewrite"}:
        ap.error(f"--phase2-roles: {args.phase2_roles!r}; name critique, rewrite or both, comma-separated")
    want = lambda s: args.stage in ("all", s)  # noqa: E731
    if args.stage == "continue":
        print(stage_continue(args.work, args.work / "pairs.jsonl", args))
        return
    if args.stage == "continue-phase2":
        print(stage_continue_phase2(args.work, args.seed, roles, args))
        return
    if args.stage != "phase2":
        base = stage_base(args.work) if want("base") or want("train") else None
        pairs = stage_pairs(args.work, args.rejected_tokens, args.seed) if want("pairs") else args.work / "pairs.jsonl"
        run_dir = stage_train(args.work, base, pairs, args) if want("train") else args.work / "run"
        if want("export"):
            print(stage_export(args.work, run_dir))
    if want("phase2"):
        phase1 = args.phase1 or args.work / "run" / "adapter"
        made = stage_phase2_pairs(args.work, args.seed, roles, args.work / "adapter.gguf", args.work / "pairs-phase2.jsonl")
        pairs2 = phase2_training_set(made, roles)
        run_dir = stage_phase2_train(args.work, stage_base(args.work), phase1, pairs2, args)
        print(stage_phase2_export(args.work, phase1, args.phase2_round or run_dir / "adapter"))


if __name__ == "__main__":
    main()
