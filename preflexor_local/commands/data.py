"""``preflexor-local data generate``: preference pairs from a corpus with a teacher and a student model."""

from __future__ import annotations

import json
import sys

import click

from preflexor_local.config import cli_options, from_kwargs
from preflexor_local.train.config import GenerationConfig


@click.group("data")
def data() -> None:
    """Preference data for training.

    \b
    preflexor-local data generate --store bio.db --teacher http://127.0.0.1:8000/v1 --student ./base -n 200 -o pairs.jsonl
    """


@data.command("generate")
@cli_options(GenerationConfig)
@click.option("--student", required=True, help="Student model spec (the model you will train): its replies are the rejected ones.")
@click.option(
    "-o", "--output", required=True, help="JSONL file; pairs are appended as they are made. An existing file is finished to -n pairs (a rerun resumes)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def generate(student, output, as_json, **kw):
    """Write preference pairs (teacher = chosen with thinking, student = rejected) to a JSONL file."""
    from preflexor_local import backends
    from preflexor_local.train.generate import open_generator

    cfg = from_kwargs(GenerationConfig, kw)
    gen = open_generator(cfg, quiet=as_json)
    report = gen.generate(cfg.n, output, backends.load(student, cfg.load_options()))
    d = report.to_dict()
    if as_json:
        click.echo(json.dumps(d))
    else:
        filtered = ", ".join(f"{k}: {v}" for k, v in d["filtered"].items()) or "none"
        had = f"; it held {d['existing']} already" if d["existing"] else ""
        click.echo(
            f"wrote {d['written']} pairs to {output}{had} ({d['attempted']} questions tried; filtered: {filtered}; {d['pairs_per_minute']} pairs/min)",
            err=True,
        )
    if report.written == 0 and report.existing < cfg.n:  # nothing written where pairs were missing: every try was filtered
        sys.exit(1)
