"""GGUF -> a trainable Hugging Face checkpoint (dense float weights).

Weights: transformers reads the GGUF (``from_pretrained(..., gguf_file=...)``)
and dequantises every tensor to dense float (it undoes llama.cpp's q/k rope
permutation and Gemma's ``w + 1`` norms itself). It then refuses to save what it
loaded ("quantized with gguf and is not serializable") although the weights are
already dense: we drop the GGUF quantizer marker before ``save_pretrained``.

Tokenizer: for byte-level BPE GGUFs (``tokenizer.ggml.model == "gpt2"``) we build
``tokenizer.json`` ourselves from the GGUF's tokens, merges and token types, with
the pre-tokenizer regex its ``tokenizer.ggml.pre`` names (so ids, special
tokens and padding rows stay exactly as in the GGUF). SentencePiece GGUFs
(``"llama"``: Gemma, Llama 2) go through transformers' own GGUF tokenizer
conversion. Either way the result must not have more tokens than the model has
embedding rows, and the thinking tags keep their ids.

Chat template and end of turn: the GGUF's ``tokenizer.chat_template`` is
written as ``chat_template.jinja`` (none when the GGUF has none, e.g. the base
Gemma 3 270M, and the result says so); ``generation_config.eos_token_id`` lists
eos, the GGUF's eot id, and the known end-of-turn tokens the vocabulary marks
as control tokens (``<end_of_turn>``, ``<|eot_id|>``, ``<|im_end|>``, ``<|end|>``).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import _bootstrap  # noqa: F401  (run from a checkout)

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from preflexor_local.errors import InvalidModelError, ModelNotFoundError

END_OF_TURN = ("<end_of_turn>", "<|eot_id|>", "<|im_end|>", "<|end|>")
PRE_REGEX = {
    "llama-bpe": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
}
SUPPORTED_ARCHS = ("llama", "qwen2", "qwen3", "gemma3", "mistral", "phi3", "gemma2", "gemma")


@dataclass
class HFResult:
    output: str
    arch: str
    tokenizer: str
    vocab_rows: int
    chat_template: bool
    eos_token_id: list[int]
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _meta(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    try:
        return f.contents()
    except Exception:  # noqa: BLE001
        return default


def _bpe_tokenizer(reader):
    """A PreTrainedTokenizerFast equal to the GGUF's byte-level BPE vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tokens = _meta(reader, "tokenizer.ggml.tokens")
    types = _meta(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _meta(reader, "tokenizer.ggml.merges", [])]
    # (a space inside a merge part was written as chr(ord(" ") + 256) == "Ġ", its byte-level form: kept as is)
    vocab = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    pre = _meta(reader, "tokenizer.ggml.pre", "gpt-2")
    if pre in PRE_REGEX:
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(PRE_REGEX[pre]), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    else:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    added = []
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if ty in (3, 4):  # CONTROL, USER_DEFINED
            added.append((i, AddedToken(t, special=ty == 3, normalized=False)))
    tk.add_tokens([a for _, a in sorted(added)])
    got = {t: tk.token_to_id(t) for _, a in added for t in [a.content]}
    wrong = [t for (i, a) in added for t in [a.content] if got[t] != i]
    if wrong:
        raise InvalidModelError(f"rebuilding the GGUF tokenizer moved added tokens {wrong[:3]}")

    def tok_text(key):
        i = _meta(reader, key)
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    bos = tok_text("tokenizer.ggml.bos_token_id")
    if bool(_meta(reader, "tokenizer.ggml.add_bos_token", False)) and bos:
        bos_id = int(_meta(reader, "tokenizer.ggml.bos_token_id"))
        tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
    specials = [a.content for _, a in added if a.special]
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=bos,
        eos_token=tok_text("tokenizer.ggml.eos_token_id"),
        pad_token=tok_text("tokenizer.ggml.padding_token_id"),
        unk_token=tok_text("tokenizer.ggml.unknown_token_id"),
        extra_special_tokens=[
            s
            for s in specials
            if s not in {bos, tok_text("tokenizer.ggml.eos_token_id"), tok_text("tokenizer.ggml.padding_token_id"), tok_text("tokenizer.ggml.unknown_token_id")}
        ],
    )


def gguf_to_hf(
    gguf_path: str | Path, out: str | Path, *, force: bool = False, dtype: str = "float32", chat_template: str | None = None, quiet: bool = False
) -> HFResult:
    """Dequantise ``gguf_path`` into the HF checkpoint folder ``out`` (atomically)."""
    import gguf

    from preflexor_local.convert._common import atomic_dir, check_output, info, read_template_arg, torch_dtype

    t0 = time.perf_counter()
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise ModelNotFoundError(f"GGUF file not found: {gguf_path}", hint="pass a .gguf file")
    with open(gguf_path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise InvalidModelError(f"{gguf_path} is not a GGUF file (bad magic)")
    try:
        reader = gguf.GGUFReader(str(gguf_path))
    except Exception as err:  # noqa: BLE001 - a damaged file
        raise InvalidModelError(f"{gguf_path} cannot be read as GGUF: {err}", hint="the file is truncated or damaged") from None
    arch = _meta(reader, "general.architecture", "?")
    if arch not in SUPPORTED_ARCHS:
        raise InvalidModelError(f"GGUF architecture {arch!r} is not supported for GGUF -> HF", hint=f"supported: {', '.join(SUPPORTED_ARCHS)}")
    out = check_output(out, force)
    tok_model = _meta(reader, "tokenizer.ggml.model")
    tokens = _meta(reader, "tokenizer.ggml.tokens") or []
    types = _meta(reader, "tokenizer.ggml.token_type") or []
    template = read_template_arg(chat_template) if chat_template is not None else _meta(reader, "tokenizer.chat_template")
    notes: list[str] = []

    from transformers import AutoModelForCausalLM, AutoTokenizer

    info(f"reading {gguf_path.name} (dequantising to {dtype}) ...", quiet)
    if tok_model == "gpt2":
        tok = _bpe_tokenizer(reader)
        notes.append(f"byte-level BPE tokenizer rebuilt from the GGUF (pre-tokenizer {_meta(reader, 'tokenizer.ggml.pre')!r})")
    else:
        tok = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        notes.append(f"tokenizer converted by transformers from the GGUF's {tok_model!r} vocabulary")
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch_dtype(dtype))
    model.hf_quantizer = None  # the weights are dense now; the marker only blocks save_pretrained
    for cfg in (model.config, getattr(model.config, "text_config", None)):
        if cfg is not None and hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:
        raise InvalidModelError(
            f"the tokenizer read from the GGUF has {len(tok)} tokens but the model only {rows} rows",
            hint="this GGUF's vocabulary cannot be converted faithfully",
        )
    if template:
        tok.chat_template = template
    else:
        notes.append("the GGUF has no chat template (a base model): none written; add one with --chat-template before chat training")
    eos = []
    for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id"):
        v = _meta(reader, key)
        if v is not None and int(v) not in eos:
            eos.append(int(v))
    for i, (t, ty) in enumerate(zip(tokens, types)):
        if t in END_OF_TURN and ty == 3 and i not in eos and (not template or t in template or tok_model != "gpt2"):
            eos.append(i)
    gc = model.generation_config
    gc.eos_token_id = eos if len(eos) > 1 else (eos[0] if eos else gc.eos_token_id)
    if tok.bos_token_id is not None:
        gc.bos_token_id = tok.bos_token_id
    if tok.pad_token_id is not None:
        gc.pad_token_id = tok.pad_token_id
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    info(f"wrote {out}", quiet)
    return HFResult(str(out), arch, str(tok_model), rows, bool(template), eos, time.perf_counter() - t0, notes)


def _command():
    import click

    @click.command("hf")
    @click.argument("gguf_file", type=click.Path(path_type=Path))
    @click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Folder for the HF checkpoint.")
    @click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16", "float16"]), help="Weights dtype to save.")
    @click.option("--chat-template", help="A .jinja file (or template text) to store when the GGUF has none.")
    @click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
    def hf_cmd(gguf_file, output, dtype, chat_template, force, as_json):
        """Turn GGUF_FILE into a trainable Hugging Face checkpoint (dequantised, template and end-of-turn kept)."""
        res = gguf_to_hf(gguf_file, output, force=force, dtype=dtype, chat_template=chat_template, quiet=as_json)
        if as_json:
            click.echo(json.dumps(res.to_dict()))
            return
        click.echo(f"{res.output}\t{res.arch}\t{res.vocab_rows} rows\tchat template: {'yes' if res.chat_template else 'no'}\teos {res.eos_token_id}")
        for n in res.notes:
            click.echo(f"note: {n}")

    return hf_cmd


command = _command()

if __name__ == "__main__":
    from preflexor_local.convert._common import run_script

    run_script(command)
