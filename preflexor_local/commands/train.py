"""``preflexor-local train orpo|dpo|sft|preflexor``: PRefLexOR Phase I / Phase II training (TRL or MLX engine)."""

from __future__ import annotations

import json
import os

import click

from preflexor_local.config import cli_options, from_kwargs
from preflexor_local.train.config import GenerationConfig, PreflexorPhases, TrainConfig

# Generation settings a run decides itself: the phase follows the method; seed and tags are TrainConfig's.
_FROM_RUN = ("phase", "seed", "tags")


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


def _make(method: str):
    @cli_options(TrainConfig, exclude=("method",))
    @cli_options(GenerationConfig, exclude=_FROM_RUN)
    @click.option("--merge/--no-merge", default=True, show_default=True, help="Also save the merged model (output/merged) at the end.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
    def command(merge, as_json, **kw):
        from preflexor_local.train.run import train as run_train

        kw["method"] = method
        cfg = from_kwargs(TrainConfig, kw)  # before GenerationConfig, which also has seed and tags fields
        generation = from_kwargs(GenerationConfig, kw)
        source = generation if generation.store and not cfg.data else None
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
        "sft": "Supervised fine-tune on the chosen replies only (the rejected replies are not run).",
    }[method]
    return click.command(method)(command)


for _method in ("orpo", "dpo", "sft"):
    train.add_command(_make(_method))


# Settings each phase chooses for itself (resolved per method), so one value cannot silently serve both.
_PER_PHASE = ("method", "rounds", "data", "loss", "beta", "label_smoothing", "lr", "steps", "mask_thinking", "train_embeddings")


@train.command("preflexor")
@cli_options(TrainConfig, exclude=_PER_PHASE)
@cli_options(GenerationConfig, exclude=_FROM_RUN)
@cli_options(PreflexorPhases)
@click.option("--json", "as_json", is_flag=True, help="Print both phases' results as JSON on stdout.")
def preflexor(as_json, **kw):
    """Both phases in one run: Phase I (ORPO) rounds, merge, then Phase II (DPO-family, thinking masked) rounds
    on the merged Phase I model. Outputs: OUTPUT/phase1 and OUTPUT/phase2 (whose merged/ is the final model)."""
    from preflexor_local.train.run import train_preflexor

    phases = from_kwargs(PreflexorPhases, kw)
    base = from_kwargs(TrainConfig, kw)  # before GenerationConfig, which also has seed and tags fields
    generation = from_kwargs(GenerationConfig, kw)

    def announce(phase: int, cfg: TrainConfig) -> None:
        if not as_json:
            click.secho(f"── Phase {phase}: {cfg.method}, {cfg.rounds} round(s) -> {cfg.output}", err=True, dim=True)

    results = train_preflexor(base, generation, phases, quiet=as_json, on_phase=announce)
    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        click.echo(json.dumps({k: r.to_dict() for k, r in results.items()}))
    else:
        final = results["phase2"].final.get("merged") or results["phase2"].output
        click.echo(f"Phase I {results['phase1'].rounds_done} round(s), Phase II {results['phase2'].rounds_done} round(s) -> {final}", err=True)
