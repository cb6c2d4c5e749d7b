"""``preflexor-local data generate``: preference pairs from a corpus with a teacher and a student model."""

from __future__ import annotations

import json
import sys

import click

from preflexor_local.config import LoadOptions


def generation_options(fn):
    """Options shared by ``data generate`` and ``train orpo|dpo`` (generated data)."""
    opts = [
        click.option("--store", help="RAG store (.db) to draw context from; a .txt/.md file or folder also works."),
        click.option("--teacher", help="Teacher model spec: GGUF file, HF directory, or http(s)://…/v1 server."),
        click.option("--judge", "judge_spec", help="Judge model spec (default: the teacher when --judge-pairs is on)."),
        click.option("--judge-pairs/--no-judge-pairs", default=False, show_default=True, help="Keep a pair only when the judge scores the student's answer below the teacher's."),
        click.option("--samples", type=int, default=1, show_default=True, help="Student candidates per question (the judge picks the hardest worse one)."),
        click.option("--style", type=click.Choice(["sections", "graph"]), default="sections", show_default=True, help="Thinking layout: headed sections, or a knowledge graph (IS-A / RELATES-TO / INFLUENCES) first."),
        click.option("--categories", help="Comma-separated thinking headings (default: the PRefLexOR set)."),
        click.option("--k-random", type=int, default=3, show_default=True, help="Random chunks that seed each question."),
        click.option("--k-search", type=int, default=3, show_default=True, help="Chunks retrieved for each question."),
        click.option("--teacher-max-tokens", type=int, default=512, show_default=True, help="Most tokens per teacher call."),
        click.option("--student-max-tokens", type=int, default=512, show_default=True, help="Most tokens per student reply."),
        click.option("--max-context-chars", type=int, default=6000, show_default=True, help="Most characters of retrieved context per prompt."),
        click.option("--retries", type=int, default=3, show_default=True, help="Tries per teacher call before failing."),
        click.option("--teacher-ctx", type=int, default=None, help="Context window for a local teacher/student."),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def build_generation(kw: dict, phase: int, n: int, seed: int, quiet: bool):
    """(PairGenerator, LoadOptions for local models) from the shared options (removed from ``kw``)."""
    from preflexor_local import backends
    from preflexor_local.errors import UsageError
    from preflexor_local.train.generate import DEFAULT_CATEGORIES, GenerationConfig, PairGenerator, open_corpus

    store, teacher = kw.pop("store"), kw.pop("teacher")
    if not store or not teacher:
        raise UsageError("generating pairs needs --store and --teacher", hint="or train from a fixed dataset with --data pairs.jsonl")
    cats = kw.pop("categories")
    ctx = kw.pop("teacher_ctx")
    gcfg = GenerationConfig(
        n=n, phase=phase, k_random=kw.pop("k_random"), k_search=kw.pop("k_search"),
        categories=tuple(c.strip() for c in cats.split(",") if c.strip()) if cats else DEFAULT_CATEGORIES,
        style=kw.pop("style"), samples=kw.pop("samples"), judge=kw.pop("judge_pairs"),
        teacher_max_tokens=kw.pop("teacher_max_tokens"), student_max_tokens=kw.pop("student_max_tokens"),
        retries=kw.pop("retries"), seed=seed, max_context_chars=kw.pop("max_context_chars"),
    )
    judge_spec = kw.pop("judge_spec")
    opts = LoadOptions(ctx=ctx)
    corpus = open_corpus(store)
    teacher_b = backends.load(teacher, opts)
    judge_b = backends.load(judge_spec, opts) if judge_spec else None
    return PairGenerator(teacher_b, corpus, gcfg, judge=judge_b, quiet=quiet), opts


@click.group("data")
def data() -> None:
    """Preference data for training.

    \b
    preflexor-local data generate --store bio.db --teacher http://127.0.0.1:8000/v1 --student ./base -n 200 -o pairs.jsonl
    """


@data.command("generate")
@generation_options
@click.option("--student", required=True, help="Student model spec (the model you will train): its replies are the rejected ones.")
@click.option("-n", "n", type=int, default=50, show_default=True, help="Pairs to write.")
@click.option("--phase", type=click.Choice(["1", "2"]), default="1", show_default=True, help="1: rejected = the student's plain answer; 2: its full thinking + answer.")
@click.option("-o", "--output", required=True, help="JSONL file; pairs are appended as they are made.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def generate(student, n, phase, output, seed, as_json, **kw):
    """Write preference pairs (teacher = chosen with thinking, student = rejected) to a JSONL file."""
    from preflexor_local import backends

    gen, opts = build_generation(kw, int(phase), n, seed, quiet=as_json)
    student_b = backends.load(student, opts)
    report = gen.generate(n, output, student_b)
    d = report.to_dict()
    if as_json:
        click.echo(json.dumps(d))
    else:
        filtered = ", ".join(f"{k}: {v}" for k, v in d["filtered"].items()) or "none"
        click.echo(f"wrote {d['written']} pairs to {output} ({d['attempted']} questions tried; filtered: {filtered}; {d['pairs_per_minute']} pairs/min)", err=True)
    if report.written == 0:
        sys.exit(1)
