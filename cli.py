"""preflexor-local: the command line.

Wiring only. Each command lives in its own module under
``preflexor_local/commands/`` and is imported when it is run, so
``preflexor-local --help`` never pays for torch, llama.cpp or MLX.
``preflexor-local "question"`` is ``preflexor-local ask "question"``.
Library errors become one red line and a hint; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib

import click

from preflexor_local import __version__
from preflexor_local.commands import run

# name -> "module:attribute" of a click command; adding a command is one line here.
COMMANDS = {
    "ask": "preflexor_local.commands.ask:ask",
    "models": "preflexor_local.commands.models:models",
    "index": "preflexor_local.commands.index:index",
    "convert": "preflexor_local.commands.convert:convert",
    "train": "preflexor_local.commands.train:train",
    "data": "preflexor_local.commands.data:data",
    "eval": "preflexor_local.commands.eval:eval_command",
    "serve": "preflexor_local.commands.serve:serve",
    "export": "preflexor_local.commands.export:export",
}
DEFAULT_COMMAND = "ask"
_GROUP_FLAGS = {"--help", "-h", "--version"}


class LazyDefaultGroup(click.Group):
    """A group whose commands import on use, with a default command for bare arguments."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in COMMANDS and args[0] not in _GROUP_FLAGS:
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help without importing every command module.
        rows = [(name, _SUMMARIES.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


_SUMMARIES = {
    "ask": "Answer a question with recursive thinking (the default command).",
    "models": "List the models and backends that resolve offline.",
    "index": "Build and search a local RAG store (sqlite-vec).",
    "convert": "Convert checkpoints: HF to GGUF / MLX, LoRA merge, verify.",
    "train": "Train with ORPO / DPO / EXO (TRL or MLX).",
    "data": "Generate preference data from a corpus with a teacher model.",
    "eval": "Measure whether recursion helps: rounds vs equal-budget baselines.",
    "serve": "Serve recursive reasoning over an OpenAI-compatible HTTP API.",
    "export": "Export a merged model for Ollama, llama-server or LM Studio.",
}


@click.group(cls=LazyDefaultGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="preflexor-local")
def cli() -> None:
    """Recursive thinking-and-reflection inference (PRefLexOR), offline.

    \b
    preflexor-local "Why is spider silk so tough?" --recursive 3
    preflexor-local ask "..." --model ./model.gguf --critic ./critic.gguf --mode reflect
    preflexor-local ask "..." --model http://127.0.0.1:8080/v1 --json

    Add --debug anywhere to see tracebacks.
    """


def main(argv: list[str] | None = None) -> None:
    run(cli, argv, prog_name="preflexor-local")


if __name__ == "__main__":
    main()
