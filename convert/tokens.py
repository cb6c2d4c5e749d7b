"""Add the thinking / reflection tags to a checkpoint as special tokens.

One path shared by training and conversion, so every tool sees the same ids:

* each tag that does not already encode to exactly one id is added to the
  tokenizer as a *special* added token (never split, never normalised);
* the input embedding matrix (and the output matrix when it is not tied to it)
  grows to ``len(tokenizer)`` rounded up to a multiple of 64 (fast kernels, and
  what llama.cpp / MLX expect of a padded vocab); it never shrinks;
* every new row, and every row of a newly added tag that falls into spare
  padding rows, is set to the mean of the rows of the tokens that existed
  before. A mean row makes the new token's logit about average and its input
  a "typical" vector, so training starts from a neutral point instead of from
  noise (the rows beyond the old vocabulary are untrained in any case).

Library: ``add_thinking_tokens(model, tokenizer, fmt) -> [ids]`` and
``add_thinking_tokens_to_dir(src, out)``. CLI: ``preflexor-local convert
add-tokens DIR -o OUT`` or ``python convert/tokens.py DIR -o OUT``.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import _bootstrap  # noqa: F401  (run from a checkout)

from dataclasses import asdict, dataclass, field
from pathlib import Path

from preflexor_local.errors import InvalidModelError
from preflexor_local.format import ThinkingFormat

PAD_MULTIPLE = 64


def single_token_id(tokenizer, text: str) -> int | None:
    """The id ``text`` encodes to when it is exactly one token, else None."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def add_thinking_tokens(model, tokenizer, fmt: ThinkingFormat | None = None, pad_to_multiple_of: int = PAD_MULTIPLE) -> list[int]:
    """Make the four tags single special tokens of ``tokenizer`` and ``model``; return their ids.

    ``model`` may be None to change only the tokenizer. Idempotent: tags that
    already encode to one id are kept as they are.
    """
    import torch
    from tokenizers import AddedToken

    fmt = fmt or ThinkingFormat()
    before = len(tokenizer)
    missing = [t for t in fmt.tags if single_token_id(tokenizer, t) is None]
    if missing:
        tokenizer.add_special_tokens(
            {"extra_special_tokens": [AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False) for t in missing]},
            replace_extra_special_tokens=False,
        )
    ids = [single_token_id(tokenizer, t) for t in fmt.tags]
    if any(i is None for i in ids):
        bad = [t for t, i in zip(fmt.tags, ids) if i is None]
        raise InvalidModelError(
            f"the tokenizer still splits {bad} after adding them as special tokens",
            hint="this tokenizer type cannot hold added tokens; use a fast (tokenizer.json) tokenizer",
        )
    if model is None:
        return ids
    new_ids = {tokenizer.convert_tokens_to_ids(t) for t in missing}
    emb_in = model.get_input_embeddings()
    old_rows = emb_in.weight.shape[0]
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    if max(ids) >= model.get_input_embeddings().weight.shape[0]:
        raise InvalidModelError(f"tag id {max(ids)} is outside the model's {model.get_input_embeddings().weight.shape[0]} embedding rows")
    known = min(before, old_rows)  # rows of tokens that existed before (trained)
    rows = sorted(i for i in new_ids if i < old_rows) + list(range(old_rows, model.get_input_embeddings().weight.shape[0]))
    if rows:
        with torch.no_grad():
            index = torch.tensor(rows, dtype=torch.long)
            w_in = model.get_input_embeddings().weight
            w_in[index] = w_in[:known].float().mean(dim=0).to(w_in.dtype)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != w_in.data_ptr():
                w_out = out.weight
                w_out[index] = w_out[:known].float().mean(dim=0).to(w_out.dtype)
                if getattr(out, "bias", None) is not None:
                    out.bias[index] = out.bias[:known].float().mean().to(out.bias.dtype)
    return ids


@dataclass
class TokensResult:
    output: str
    ids: dict[str, int]
    added: list[str]
    vocab_rows: int
    tokenizer_size: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def add_thinking_tokens_to_dir(
    src: str | Path,
    out: str | Path,
    fmt: ThinkingFormat | None = None,
    *,
    force: bool = False,
    dtype: str = "auto",
    pad_to_multiple_of: int = PAD_MULTIPLE,
    quiet: bool = False,
) -> TokensResult:
    """Load the HF checkpoint ``src``, add the tags, save to ``out`` (atomically)."""
    from preflexor_local.convert._common import atomic_dir, check_output, check_safetensors, info, read_hf_config, torch_dtype, weight_files

    fmt = fmt or ThinkingFormat()
    src = Path(src).expanduser()
    read_hf_config(src)
    check_safetensors(weight_files(src))
    out = check_output(out, force)
    if out.resolve() == src.resolve():
        from preflexor_local.errors import UsageError

        raise UsageError("the output folder is the input folder", hint="write to a new folder with -o")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info(f"loading {src} ...", quiet)
    tokenizer = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch_dtype(dtype))
    added = [t for t in fmt.tags if single_token_id(tokenizer, t) is None]
    ids = add_thinking_tokens(model, tokenizer, fmt, pad_to_multiple_of)
    notes = []
    if not added:
        notes.append("all tags were already single tokens: tokenizer and weights unchanged")
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    rows = model.get_input_embeddings().weight.shape[0]
    info(f"wrote {out}: tags {dict(zip(fmt.tags, ids))}, embedding rows {rows}", quiet)
    return TokensResult(str(out), dict(zip(fmt.tags, ids)), added, rows, len(tokenizer), notes)


def _command():
    import json

    import click

    from preflexor_local.commands.options import tags_option

    @click.command("add-tokens")
    @click.argument("model_dir", type=click.Path(path_type=Path))
    @click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Folder to write the checkpoint with the tags to.")
    @tags_option("preset")
    @click.option("--dtype", default="auto", show_default=True, help="Weights dtype to load and save: auto, float32, float16, bfloat16.")
    @click.option("--pad-to", default=PAD_MULTIPLE, show_default=True, help="Round the embedding rows up to a multiple of this.")
    @click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
    def add_tokens(model_dir, output, preset, dtype, pad_to, force, as_json):
        """Add the thinking/reflection tags to MODEL_DIR as special tokens (embeddings resized, new rows = mean)."""
        res = add_thinking_tokens_to_dir(model_dir, output, ThinkingFormat.preset(preset), force=force, dtype=dtype, pad_to_multiple_of=pad_to, quiet=as_json)
        if as_json:
            click.echo(json.dumps(res.to_dict()))
        else:
            for tag, i in res.ids.items():
                click.echo(f"{tag}\t{i}\t{'added' if tag in res.added else 'already present'}")
            for n in res.notes:
                click.echo(f"note: {n}")

    return add_tokens


command = _command()

if __name__ == "__main__":
    from preflexor_local.convert._common import run_script

    run_script(command)
