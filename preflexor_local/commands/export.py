"""``preflexor-local export``: a model with its adapters merged, for the runtime that will run it.

``gguf`` writes one file; ``ollama``, ``llama-server`` and ``lmstudio`` write a folder
that runtime loads (the merged GGUF plus its Modelfile, launcher or note). The work
lives in ``preflexor_local.convert.export_gguf`` / ``export_targets``; this module
is wiring only.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

_MODEL_HELP = "MODEL: a .gguf file, a Hugging Face checkpoint folder, or `default` (Gemma 3 270M + the demo adapter; `gemma3-270m-base` without it)."


def _common(fn):
    """Options every export takes."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")(fn)
    fn = click.option("--force", is_flag=True, help="Replace the output if it exists.")(fn)
    fn = click.option(
        "--chat-template", default=None, help="Record this known chat format (gemma, llama3, chatml, mistral, plain) instead of the model's or adapter's."
    )(fn)
    fn = click.option(
        "--merged-type",
        default="q8_0",
        show_default=True,
        help="With --outtype same: the type of the tensors the merge changed, where it has more bits than theirs (q8_0, f16, f32; same keeps theirs).",
    )(fn)
    fn = click.option(
        "--outtype",
        default="same",
        show_default=True,
        help="same (each tensor keeps its type, untouched ones byte for byte), f32, f16, bf16, q8_0, q4_k_m, q5_k_m or q6_k (whole file, llama.cpp).",
    )(fn)
    fn = click.option(
        "--adapter", "adapters", multiple=True, help="LoRA to merge: FILE.gguf[:SCALE] or a PEFT/MLX adapter folder[:SCALE]; repeat for several."
    )(fn)
    return click.argument("model", default="default")(fn)


def _report(res, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(res.to_dict()))
        return
    where = getattr(res, "folder", None) or res.output
    click.echo(f"{where}\t{', '.join(res.adapters) or 'no adapter'}\t{res.chat_template or 'model template'}\t{res.seconds:.1f} s")
    for note in res.notes:
        click.echo(f"note: {note}")


@click.group("export")
def export() -> None:
    """Export a model with its adapters merged: one GGUF, or a folder for Ollama, llama-server or LM Studio.

    \b
    preflexor-local export gguf default -o preflexor-demo.gguf
    preflexor-local export gguf base.gguf --adapter adapter.gguf:0.8 --outtype same -o merged.gguf
    preflexor-local export ollama default -o ollama-demo && cd ollama-demo && ollama create demo -f Modelfile
    preflexor-local export llama-server default -o server-demo && ./server-demo/run.sh --port 8080
    preflexor-local export lmstudio default -o lms-demo && lms import lms-demo/lms-demo.gguf
    """


@export.command("gguf")
@_common
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="The merged .gguf to write.")
def gguf_cmd(model, adapters, outtype, merged_type, chat_template, force, as_json, output):
    """Merge the adapters into MODEL and write one GGUF (llama.cpp, Ollama, LM Studio, llama-server all load it)."""
    from preflexor_local.convert.export_gguf import export_gguf

    _report(export_gguf(model, adapters, output, outtype, merged_type=merged_type, chat_template=chat_template, force=force, quiet=as_json), as_json)


gguf_cmd.help += "\n\n" + _MODEL_HELP


@export.command("ollama")
@_common
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Folder to write (model GGUF + Modelfile).")
@click.option("--as-adapter", is_flag=True, help="Write the base GGUF and an ADAPTER line instead of merging (one adapter; see docs/deploy.md).")
@click.option("--system", default=None, help="A SYSTEM prompt for the Modelfile.")
def ollama_cmd(model, adapters, outtype, merged_type, chat_template, force, as_json, output, as_adapter, system):
    """A folder for `ollama create NAME -f Modelfile`: merged GGUF, Go TEMPLATE with the thinking tags, stops."""
    from preflexor_local.convert.export_targets import export_ollama

    res = export_ollama(
        model,
        adapters,
        output,
        as_adapter=as_adapter,
        system=system,
        outtype=outtype,
        merged_type=merged_type,
        chat_template=chat_template,
        force=force,
        quiet=as_json,
    )
    _report(res, as_json)


@export.command("llama-server")
@_common
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Folder to write (model GGUF, chat-template.jinja, run.sh).")
@click.option("--as-adapter", is_flag=True, help="Write the base GGUF and pass the adapters with --lora instead of merging.")
def llama_server_cmd(model, adapters, outtype, merged_type, chat_template, force, as_json, output, as_adapter):
    """A folder with run.sh: llama-server on the merged GGUF with our chat template file."""
    from preflexor_local.convert.export_targets import export_llama_server

    res = export_llama_server(
        model, adapters, output, as_adapter=as_adapter, outtype=outtype, merged_type=merged_type, chat_template=chat_template, force=force, quiet=as_json
    )
    _report(res, as_json)


@export.command("lmstudio")
@_common
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="Folder to write (merged GGUF + a note).")
def lmstudio_cmd(model, adapters, outtype, merged_type, chat_template, force, as_json, output):
    """A folder with the merged GGUF for `lms import` (LM Studio has no runtime LoRA)."""
    from preflexor_local.convert.export_targets import export_lmstudio

    res = export_lmstudio(model, adapters, output, outtype=outtype, merged_type=merged_type, chat_template=chat_template, force=force, quiet=as_json)
    _report(res, as_json)


for _cmd in (ollama_cmd, llama_server_cmd, lmstudio_cmd):
    _cmd.help += "\n\n" + _MODEL_HELP
