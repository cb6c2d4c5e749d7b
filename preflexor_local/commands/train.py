"""``preflexor-local train orpo|dpo|sft``: PRefLexOR Phase I / Phase II training (TRL or MLX engine)."""

from __future__ import annotations

import json
import os

import click

from preflexor_local.commands.data import build_generation, generation_options
from preflexor_local.config import cli_options, from_kwargs
from preflexor_local.train.config import TrainConfig


@click.group("train")
def train() -> None:
    """Train with ORPO (Phase I), DPO/EXO with masked thinking (Phase II), or SFT.

    \b
    preflexor-local train orpo --model ./base --data pairs.jsonl -o ./phase1
    preflexor-local train orpo --model ./base --store bio.db --teacher URL --rounds 20 --steps-per-round 50 -o ./phase1
    preflexor-local train dpo --model ./phase1 --loss exo_pair --mask-thinking --store bio.db --teacher URL -o ./phase2
    preflexor-local train orpo ... -o ./phase1 --resume
    accelerate launch -m preflexor_local train orpo ...
    """


def _make(method: str, phase: int):
    @cli_options(TrainConfig, exclude=("method",))
    @generation_options
    @click.option("--pairs-per-round", type=int, default=50, show_default=True, help="Pairs generated each round (with --store/--teacher).")
    @click.option("--merge/--no-merge", default=True, show_default=True, help="Also save the merged model (output/merged) at the end.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
    def command(pairs_per_round, merge, as_json, **kw):
        from preflexor_local.train.run import GeneratedPairs, train as run_train

        kw["method"] = method
        store = kw.get("store")
        cfg = from_kwargs(TrainConfig, kw)
        source = None
        if store and not cfg.data:
            gen, _ = build_generation(kw, phase, pairs_per_round, cfg.seed, quiet=as_json)
            source = GeneratedPairs(gen, pairs_per_round)
        result = run_train(cfg, source, quiet=as_json, merge=merge)
        if os.environ.get("RANK", "0") != "0":
            return  # one report per run, from the main process
        if as_json:
            click.echo(json.dumps(result.to_dict()))
        else:
            where = result.final.get("merged") or result.final.get("adapter") or result.output
            click.echo(f"trained {result.rounds_done} round(s), {result.global_step} steps in {result.seconds:.1f}s -> {where}", err=True)

    command.__doc__ = {
        "orpo": "Phase I: ORPO teaches the model to think inside the tags (LoRA/DoRA incl. the tag embeddings).",
        "dpo": "Phase II: DPO-family (exo_pair default) on the model's own replies, thinking masked from the loss.",
        "sft": "Supervised fine-tune on the chosen replies only (ORPO with beta 0).",
    }[method]
    return click.command(method)(command)


train.add_command(_make("orpo", 1))
train.add_command(_make("dpo", 2))
train.add_command(_make("sft", 1))


# Settings each phase chooses for itself (resolved per method), so one value cannot silently serve both.
_PER_PHASE = ("method", "rounds", "data", "loss", "beta", "label_smoothing", "lr", "steps", "mask_thinking", "train_embeddings")
_GENERATION_KEYS = ("store", "teacher", "judge_spec", "judge_pairs", "samples", "style", "categories", "k_random", "k_search",
                    "teacher_max_tokens", "student_max_tokens", "max_context_chars", "retries", "teacher_ctx")


@train.command("preflexor")
@cli_options(TrainConfig, exclude=_PER_PHASE)
@generation_options
@click.option("--phase1-rounds", type=int, default=2, show_default=True, help="Phase I (ORPO) active-learning rounds.")
@click.option("--phase2-rounds", type=int, default=1, show_default=True, help="Phase II (DPO-family) active-learning rounds.")
@click.option("--loss", "phase2_loss", default="exo_pair", show_default=True, help="Phase II loss.")
@click.option("--pairs-per-round", type=int, default=50, show_default=True, help="Pairs generated each round.")
@click.option("--json", "as_json", is_flag=True, help="Print both phases' results as JSON on stdout.")
def preflexor(phase1_rounds, phase2_rounds, phase2_loss, pairs_per_round, as_json, **kw):
    """Both phases in one run: Phase I (ORPO) rounds, merge, then Phase II (DPO-family, thinking masked) rounds
    on the merged Phase I model. Outputs: OUTPUT/phase1 and OUTPUT/phase2 (whose merged/ is the final model)."""
    from dataclasses import replace
    from pathlib import Path

    from preflexor_local.errors import UsageError
    from preflexor_local.train.run import GeneratedPairs, train as run_train

    generation = {k: kw.pop(k) for k in _GENERATION_KEYS}
    base = from_kwargs(TrainConfig, kw)
    if not base.output:
        raise UsageError("--output is required", hint="e.g. -o ./preflexor-run (phase1/ and phase2/ are written inside)")
    out = Path(base.output).expanduser()
    phases = (
        (1, replace(base, method="orpo", rounds=phase1_rounds, output=str(out / "phase1"))),
        (2, replace(base, method="dpo", rounds=phase2_rounds, model=str(out / "phase1"), output=str(out / "phase2"),
                    loss=phase2_loss, mask_thinking=True)),
    )
    results = {}
    for phase, cfg in phases:
        if not as_json:
            click.secho(f"── Phase {phase}: {cfg.method}, {cfg.rounds} round(s) -> {cfg.output}", err=True, dim=True)
        gen, _ = build_generation(dict(generation), phase, pairs_per_round, cfg.seed, quiet=as_json)
        results[f"phase{phase}"] = run_train(cfg, GeneratedPairs(gen, pairs_per_round), quiet=as_json, merge=True)
    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        click.echo(json.dumps({k: r.to_dict() for k, r in results.items()}))
    else:
        final = results["phase2"].final.get("merged") or results["phase2"].output
        click.echo(f"Phase I {results['phase1'].rounds_done} round(s), Phase II {results['phase2'].rounds_done} round(s) -> {final}", err=True)
