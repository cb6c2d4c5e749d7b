"""Hugging Face checkpoint -> MLX folder, through mlx-lm's own ``convert``.

mlx-lm does the weight work (sanitising names, optional affine quantisation
with ``q_bits`` bits per weight and one scale/bias per ``q_group_size`` weights).
We add what users lose most often: the input is checked and refused by name
before mlx-lm starts, the output is written atomically, and afterwards the
result is re-read to prove that the thinking tags are still single tokens with
the same ids and that the chat template survived (copied over if mlx-lm dropped
it). The written ``config.json`` also gets the top-level rotary keys mlx-lm reads
(``preflexor_local.mlx_config``: transformers 5 nests them in ``rope_parameters``,
where mlx-lm does not look). Quantisation needs the hidden sizes to be multiples of
the group size.

Measured on Gemma 3 270M (top-1 agreement with transformers on greedy
continuations, ``convert verify``): 8-bit 100 %; 4-bit group 64 with 4-bit
embeddings 59 %, with 8-bit embeddings (``embed_bits=8``, the default) 67 %;
4-bit group 32 + 8-bit embeddings 74 %. Small models want ``--q-group-size 32``.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import _bootstrap  # noqa: F401  (run from a checkout)

import contextlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from preflexor_local.errors import BackendUnavailableError, InvalidModelError, UsageError
from preflexor_local.format import ThinkingFormat
from preflexor_local.mlx_config import mlx_overrides

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma3_text", "gemma3", "gemma2", "gemma", "phi3")


@dataclass
class MLXResult:
    output: str
    quantized: bool
    bits: int | None
    group_size: int | None
    tag_ids: dict[str, int | None]
    chat_template: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def convert_to_mlx(
    src: str | Path,
    out: str | Path,
    *,
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    embed_bits: int | None = 8,
    dtype: str | None = None,
    force: bool = False,
    fmt: ThinkingFormat | None = None,
    quiet: bool = False,
) -> MLXResult:
    """Convert ``src`` to an MLX folder ``out`` (atomically); check tags and template afterwards.

    ``embed_bits``: bits for the token embedding and ``lm_head`` when quantising
    (default 8, like llama.cpp's K-quant mixes keep the output matrix at higher
    precision; with tied embeddings it is the output layer). None: same as ``q_bits``.
    """
    from preflexor_local.convert._common import atomic_dir, check_output, check_safetensors, info, read_hf_config, weight_files

    t0 = time.perf_counter()
    fmt = fmt or ThinkingFormat()
    src = Path(src).expanduser()
    cfg = read_hf_config(src)
    mt = cfg.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise InvalidModelError(f"model type {mt!r} is not supported for MLX conversion here", hint=f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    mlx_overrides(cfg)  # refuses, by name, rotary settings mlx-lm cannot run, before any heavy work
    check_safetensors(weight_files(src))
    if quantize:
        if q_bits not in (2, 3, 4, 5, 6, 8):
            raise UsageError(f"--q-bits {q_bits} is not supported", hint="choose 2, 3, 4, 5, 6 or 8")
        hidden = (cfg.get("text_config") or cfg).get("hidden_size")
        if hidden and hidden % q_group_size:
            raise UsageError(f"hidden size {hidden} is not a multiple of --q-group-size {q_group_size}", hint="use a group size that divides it (32 or 64)")
    out = check_output(out, force)
    try:
        import mlx_lm
    except ImportError:
        raise BackendUnavailableError("MLX conversion needs mlx-lm, which is not installed", hint="pip install 'preflexor-local[mlx]'") from None
    from transformers import AutoTokenizer

    src_tok = AutoTokenizer.from_pretrained(src)
    notes: list[str] = []
    info(f"converting {src} with mlx-lm{f' (q{q_bits}, group {q_group_size})' if quantize else ''} ...", quiet)
    with atomic_dir(out) as tmp:
        target = tmp / "model"
        predicate = None
        if quantize and embed_bits and embed_bits != q_bits:

            def predicate(path, module, *_):  # noqa: ANN001 - mlx-lm's class predicate
                if path.endswith(("embed_tokens", "lm_head")):
                    return {"group_size": q_group_size, "bits": embed_bits, "mode": "affine"}
                return hasattr(module, "to_quantized")

            notes.append(f"embeddings / lm_head quantised to {embed_bits} bits, the rest to {q_bits}")
        with contextlib.redirect_stdout(sys.stderr):  # mlx-lm logs on stdout; keep stdout for --json
            mlx_lm.convert(
                str(src),
                str(target),
                quantize=quantize,
                q_bits=q_bits if quantize else None,
                q_group_size=q_group_size if quantize else None,
                dtype=dtype,
                quant_predicate=predicate,
            )
        # mlx-lm copies config.json as is and falls back to its own rope defaults for keys it does not find
        # (transformers 5 nests them in rope_parameters): write the keys it reads, so any mlx-lm consumer gets them.
        written = json.loads((target / "config.json").read_text(encoding="utf-8"))
        written.update(mlx_overrides(written))
        (target / "config.json").write_text(json.dumps(dict(sorted(written.items())), indent=4), encoding="utf-8")
        if src_tok.chat_template and not (
            (target / "chat_template.jinja").is_file() or "chat_template" in json.loads((target / "tokenizer_config.json").read_text()).keys()
        ):
            (target / "chat_template.jinja").write_text(src_tok.chat_template, encoding="utf-8")
            notes.append("chat template copied over (mlx-lm did not write it)")
        gen = src / "generation_config.json"
        if gen.is_file() and not (target / "generation_config.json").is_file():
            shutil.copy(gen, target / "generation_config.json")
        # check the result before it takes the final name
        out_tok = AutoTokenizer.from_pretrained(target)
        tag_ids = {}
        for tag in fmt.tags:
            a = src_tok.encode(tag, add_special_tokens=False)
            b = out_tok.encode(tag, add_special_tokens=False)
            if a != b:
                raise InvalidModelError(f"MLX conversion changed the tokenisation of {tag!r}: {a} -> {b}")
            tag_ids[tag] = b[0] if len(b) == 1 else None
        if any(v is None for v in tag_ids.values()):
            notes.append("the thinking tags are not single tokens in this tokenizer (run `convert add-tokens` first for a thinking model)")
        if (src_tok.chat_template or None) != (out_tok.chat_template or None):
            raise InvalidModelError("MLX conversion changed the chat template")
        for p in target.iterdir():
            shutil.move(str(p), tmp / p.name)
        target.rmdir()
    info(f"wrote {out}", quiet)
    return MLXResult(
        str(out),
        quantize,
        q_bits if quantize else None,
        q_group_size if quantize else None,
        tag_ids,
        bool(src_tok.chat_template),
        time.perf_counter() - t0,
        notes,
    )


def _command():
    import click

    @click.command("mlx")
    @click.argument("model_dir", type=click.Path(path_type=Path))
    @click.option("-o", "--output", type=click.Path(path_type=Path), help="MLX folder to write (default: ./<model>-mlx[-q<bits>]).")
    @click.option("-q", "--quantize", is_flag=True, help="Quantise the weights (affine, per group).")
    @click.option("--q-bits", default=4, show_default=True, help="Bits per weight when quantising.")
    @click.option("--q-group-size", default=64, show_default=True, help="Weights per scale/bias group (32 is more accurate for small models).")
    @click.option("--embed-bits", default=8, show_default=True, help="Bits for the embedding / lm_head when quantising (0 = same as --q-bits).")
    @click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), help="Dtype of unquantised weights (default: mlx-lm's choice).")
    @click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
    def mlx_cmd(model_dir, output, quantize, q_bits, q_group_size, embed_bits, dtype, force, as_json):
        """Convert the Hugging Face checkpoint MODEL_DIR to MLX (tags and chat template checked)."""
        if output is None:
            output = Path.cwd() / f"{Path(model_dir).resolve().name}-mlx{f'-q{q_bits}' if quantize else ''}"
        res = convert_to_mlx(
            model_dir,
            output,
            quantize=quantize,
            q_bits=q_bits,
            q_group_size=q_group_size,
            embed_bits=embed_bits or None,
            dtype=dtype,
            force=force,
            quiet=as_json,
        )
        if as_json:
            click.echo(json.dumps(res.to_dict()))
            return
        click.echo(f"{res.output}\t{f'q{res.bits}' if res.quantized else 'float'}\t{res.seconds:.1f} s\tchat template: {'yes' if res.chat_template else 'no'}")
        click.echo("tags: " + ", ".join(f"{t}={i}" for t, i in res.tag_ids.items()))
        for n in res.notes:
            click.echo(f"note: {n}")

    return mlx_cmd


command = _command()

if __name__ == "__main__":
    from preflexor_local.convert._common import run_script

    run_script(command)
