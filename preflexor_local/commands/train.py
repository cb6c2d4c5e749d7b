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
