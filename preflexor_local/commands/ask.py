"""``preflexor-local ask``: recursive thinking-and-reflection answers, streamed round by round.

Thinking, reflection, critiques and rewrites stream dim to stderr, intermediate
answers plain to stderr, and the final answer to stdout, so ``> answer.md``
keeps only the answer. ``--json`` prints the whole transcript instead.
"""

from __future__ import annotations

import sys

import click

from ..config import LoadOptions, Recursion, Retrieval, Sampling, cli_options, from_kwargs
from ..errors import UsageError
from .options import model_roles, tags_option

_LABELS = {
    "thinking": "thinking",
    "reflection": "reflection",
    "answer": "answer",
    "critique": "critique",
    "rewrite": "improved thinking",
    "final": "final answer",
    "evidence": "evidence",
    "stop": "stop",
}
_DIM = {"thinking", "reflection", "critique", "rewrite", "evidence", "stop"}


class Display:
    """Routes engine events to the terminal."""

    def __init__(self, quiet: bool, json_out: bool):
        self.quiet, self.json_out = quiet, json_out
        self.final_streamed = False
        self._at_line_start = True
        self._last_stream = None

    def __call__(self, event) -> None:
        to_stdout = event.channel == "final" and not self.json_out
        if event.kind == "call":
            if event.channel == "final":
                self.final_streamed = not self.json_out
            if not self.quiet:
                self._newline()
                click.secho(f"── round {event.round} · {event.role} · {_LABELS.get(event.channel, event.channel)}", err=True, dim=True)
                self._at_line_start = True
            return
        if to_stdout:
            click.echo(event.text, nl=False)
            sys.stdout.flush()
        elif not self.quiet:
            click.secho(event.text, err=True, nl=False, dim=event.channel in _DIM)
            self._at_line_start = event.text.endswith("\n")

    def end_line(self) -> None:
        self._newline()

    def _newline(self) -> None:
        if not self._at_line_start:
            click.echo("", err=True)


def _read_question(words: tuple[str, ...]) -> str:
    if words == ("-",):
        if sys.stdin is None or sys.stdin.closed:
            raise UsageError("`-` means read the question from stdin, but stdin is closed")
        return sys.stdin.read()
    if not words:
        raise UsageError("no question given", hint='preflexor-local ask "your question"  (or `-` to read it from stdin)')
    return " ".join(words)


@click.command("ask")
@click.argument("question", nargs=-1)
@model_roles()
@cli_options(Recursion)
@cli_options(Sampling)
@cli_options(LoadOptions)
@tags_option()
@cli_options(Retrieval)
@click.option("--json", "json_out", is_flag=True, help="Print the whole transcript as JSON on stdout.")
@click.option("--quiet", "-q", is_flag=True, help="Show only the final answer (no thinking on stderr).")
def ask(question, model, critic, integrator, tags, json_out, quiet, **kwargs):
    """Answer QUESTION with recursive thinking (`-` reads it from stdin).

    \b
    preflexor-local ask "Why is spider silk so tough?" --recursive 3
    preflexor-local ask "..." --mode reflect --model ./my.gguf --critic ./critic.gguf
    preflexor-local ask "..." --model http://127.0.0.1:8080/v1 --json > transcript.json
    """
    from ..format import ThinkingFormat
    from ..models import for_retrieval
    from ..rag.evidence import open_rag
    from ..reasoning.ask import ask as run_ask

    recursion = from_kwargs(Recursion, kwargs)
    sampling = from_kwargs(Sampling, kwargs)
    options = from_kwargs(LoadOptions, kwargs)
    retrieval = from_kwargs(Retrieval, kwargs)
    _validate_early(recursion, options)
    text = _read_question(question)
    if not text.strip():
        raise UsageError("the question is empty", hint='preflexor-local ask "your question"  (or `-` to read it from stdin)')
    store = open_rag(retrieval.rag) if retrieval.rag else None
    try:
        context, evidence = None, None
        if store is not None:
            from ..rag.evidence import Evidence, chunk_dict

            if not quiet:
                click.secho(f"retrieving {retrieval.rag_k} chunks from {retrieval.rag} …", err=True, dim=True)
            context = [chunk_dict(h) for h in store.search(text, k=retrieval.rag_k)]
            evidence = Evidence(store, k=retrieval.evidence_k)
        display = Display(quiet=quiet, json_out=json_out)
        if not quiet:
            shown = for_retrieval(model, store is not None)  # the name load_roles will load
            click.secho(f"loading {shown or 'the default model (gemma3-270m)'} …", err=True, dim=True)
        transcript = run_ask(
            text,
            model,
            critic=critic,
            integrator=integrator,
            sampling=sampling,
            recursion=recursion,
            options=options,
            fmt=ThinkingFormat.preset(tags),
            context=context,
            evidence=evidence,
            on_event=display,
        )
    finally:
        if store is not None:
            store.close()
    if json_out:
        click.echo(transcript.to_json())
        return
    if not display.final_streamed:
        click.echo(transcript.final_answer, nl=False)
    click.echo("")
    if not quiet:
        display.end_line()
        secs = transcript.seconds
        rate = transcript.completion_tokens / secs if secs else 0.0
        click.secho(
            f"── {len(transcript.rounds)} round(s){' + integration' if transcript.integrated else ''}{_stopped(transcript)} · "
            f"{transcript.completion_tokens} tokens · {secs:.1f} s · {rate:.1f} tok/s",
            err=True,
            dim=True,
        )


def _stopped(t) -> str:
    return {"nothing_to_fix": " (stopped: nothing to fix)", "answers_agree": " (stopped: answers agree)"}.get(t.stop_reason, "")


def _validate_early(recursion: Recursion, options: LoadOptions) -> None:
    """Settings errors before any model loads (loading can take seconds)."""
    from ..prompt import check_template_option
    from ..reasoning.strategies import check_mode

    check_mode(recursion.mode)
    check_template_option(options.chat_template)
