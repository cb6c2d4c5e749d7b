"""Command-line options that several commands share, declared once: the model roles and the thinking tag set."""

from __future__ import annotations

import click

from ..format import ThinkingFormat

MODEL_SPEC = ".gguf file, HF checkpoint dir, cached hub id, MLX dir, or http(s)://host/v1[#name]"
TAGS_HELP = "Thinking tag set: preflexor = <|thinking|>…<|/thinking|>, think = <think>…</think>."


def model_roles(what: str = "Reasoning model"):
    """``--model/-m``, ``--critic`` and ``--integrator``: a role left out uses the one before it (loaded once)."""

    def decorate(fn):
        fn = click.option("--integrator", default=None, help="Model that merges the answers (default: the critic).")(fn)
        fn = click.option("--critic", default=None, help="Critic model for reviews and rewrites (default: the reasoning model, loaded once).")(fn)
        return click.option("--model", "-m", default=None, help=f"{what}: {MODEL_SPEC}. Default: the embedded Gemma 3 270M demo model.")(fn)

    return decorate


def tags_option(dest: str = "tags"):
    """``--tags preflexor|think`` (``dest``: the parameter's name)."""
    return click.option("--tags", dest, type=click.Choice(tuple(ThinkingFormat.PRESETS)), default="preflexor", show_default=True, help=TAGS_HELP)
