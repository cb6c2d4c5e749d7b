"""``preflexor-local eval``: does recursion help on your model? Rounds against equal-budget baselines.

The progress bar (items/s, ETA) and notes go to stderr; the markdown table goes
to stdout, or with ``--json`` the whole report. The output folder keeps
``items.jsonl`` (appended as items finish, so a rerun resumes), ``report.json``,
``report.md`` and ``report.png``.
"""

from __future__ import annotations

import json

import click

from ..config import LoadOptions, Recursion, Retrieval, Sampling, cli_options, from_kwargs
from ..eval.settings import EvalSettings
from .options import model_roles, tags_option


@click.command("eval")
@click.argument("questions", required=False, default="builtin:materials")
@model_roles("Model under test")
@click.option("--judge", default=None, help="Pairwise judge (any model spec): scores open items and picks best-of-n. Without it open items are skipped.")
@cli_options(EvalSettings)
# The rounds, their early stop and the key are the conditions' and the items' own (--rounds, --adaptive, each item's kind).
@cli_options(Recursion, exclude=("rounds", "early_stop", "keyed"))
@cli_options(Retrieval)
@cli_options(Sampling)
@cli_options(LoadOptions)
@tags_option()
@click.option(
    "-o",
    "--output",
    default="eval-report",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for items.jsonl and the report; rerunning into it resumes.",
)
@click.option("--json", "json_out", is_flag=True, help="Print the whole report as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or notes on stderr.")
def eval_command(questions, model, critic, integrator, judge, tags, output, json_out, quiet, **kwargs):
    """Measure whether recursion helps: QUESTIONS is a JSONL file or builtin:NAME (default builtin:materials).

    \b
    preflexor-local eval questions.jsonl --model ./m.gguf --rounds 1,3 -o report/
    preflexor-local eval builtin:materials --model ./m.gguf --critic http://gpu:8000/v1 --rounds 1,2,3 \\
        --baselines best-of-n,self-consistency --judge ./judge.gguf --concurrency 8 --json
    preflexor-local eval builtin:grounded --rag grounded.db --rounds 1,3 --adaptive -o report/
    """
    from ..eval import evaluate, load_questions
    from ..eval.report import markdown
    from ..format import ThinkingFormat
    from ..prompt import check_template_option
    from ..reasoning.strategies import check_mode

    settings = from_kwargs(EvalSettings, kwargs)
    recursion = from_kwargs(Recursion, kwargs)
    sampling = from_kwargs(Sampling, kwargs)
    options = from_kwargs(LoadOptions, kwargs)
    retrieval = from_kwargs(Retrieval, kwargs)
    check_mode(recursion.mode)
    check_template_option(options.chat_template)
    qset = load_questions(questions)  # a bad file is refused before any model loads
    retrieval = _default_store(questions, retrieval, quiet)
    if retrieval.rag:
        from ..rag.evidence import open_rag

        open_rag(retrieval.rag).close()  # so is a missing store

    def note(msg: str) -> None:
        if not quiet:
            click.secho(msg, err=True, dim=True)

    if not quiet:
        click.secho(
            f"evaluating {model or 'the default model (gemma3-270m)'} on {questions} "
            f"(rounds {','.join(map(str, settings.rounds))}{'; adaptive' if settings.adaptive else ''}; baselines {', '.join(settings.baselines) or 'none'}"
            f"{f'; grounded in {retrieval.rag}' if retrieval.rag else ''}) → {output}",
            err=True,
            dim=True,
        )
    report = evaluate(
        qset,
        output,
        model,
        critic=critic,
        integrator=integrator,
        judge=judge,
        settings=settings,
        sampling=sampling,
        recursion=recursion,
        options=options,
        fmt=ThinkingFormat.preset(tags),
        retrieval=retrieval,
        progress=not quiet,
        note=note,
    )
    if json_out:
        click.echo(json.dumps(report, ensure_ascii=False))
    else:
        click.echo(markdown(report), nl=False)
    note(f"report: {output}/report.json, report.md, report.png")


def _default_store(questions: str, retrieval: Retrieval, quiet: bool) -> Retrieval:
    """A built-in set that ships its corpus (``builtin:grounded``) is grounded in it unless ``--rag`` names another
    store, or ``--rag none`` asks for no retrieval."""
    import dataclasses

    from ..eval.corpus import builtin_corpora
    from ..eval.questions import BUILTIN_PREFIX

    if retrieval.rag == "none":
        return dataclasses.replace(retrieval, rag=None)
    if retrieval.rag is None and questions.startswith(BUILTIN_PREFIX) and questions[len(BUILTIN_PREFIX) :] in builtin_corpora():
        if not quiet:
            click.secho(f"grounded in {questions}'s own corpus (--rag STORE for yours, --rag none for no retrieval)", err=True, dim=True)
        return dataclasses.replace(retrieval, rag=questions)
    return retrieval
