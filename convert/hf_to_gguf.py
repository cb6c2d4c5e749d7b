"""Hugging Face checkpoint -> GGUF, written with the ``gguf`` library (no llama.cpp scripts).

Supported families (refused by name otherwise, before any weight is read):
Llama (Llama 2/3/3.x, and Mistral, which llama.cpp runs as ``llama``),
Qwen2, Qwen3 and Gemma 3 text models.

The math of the conversion:

* Tensor names map through ``gguf.TensorNameMap`` for the architecture; a
  weight that maps to nothing is an error (never dropped silently), except the
  known extras listed in ``_SKIP`` and, for tied embeddings, ``lm_head``.
* Llama-family ``q_proj`` / ``k_proj`` rows are permuted from Hugging Face's
  rotate-half layout (first half of each head = real parts) to llama.cpp's
  interleaved pairs: ``W.reshape(h, 2, d/2, n).swapaxes(1, 2).reshape(h*d, n)``
  with ``h`` = heads (query) or KV heads (key). Qwen and Gemma use NEOX rope in
  llama.cpp and are written as they are.
* Gemma 3 RMSNorm multiplies by ``1 + w``; llama.cpp multiplies by ``w``, so every
  Gemma ``*norm.weight`` is written as ``w + 1``.
* The model keys (context, heads, rope, Gemma 3's sliding window) and the
  Llama 3 rope factors are the hparams table's, in ``gguf_hparams.py``.
* 1-D tensors (norms, biases) stay float32; 2-D weights get the output type
  (f32, f16, bf16, or q8_0 when the row length is a multiple of 32, else f16).
  K-quants and the other llama.cpp types are made by ``llama_model_quantize``
  from a float temp file (see ``quantize.py``).

Tensors are read one at a time (safetensors memory-mapped), converted and
written at once: the header is planned from shapes alone, so memory stays near
the largest tensor. The file is written under a temp name and renamed.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import _bootstrap  # noqa: F401  (run from a checkout)

import contextlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

# the hparams table; SUPPORTED and REFUSED stay importable from here (lora_gguf does)
from preflexor_local.convert.gguf_hparams import REFUSED, SUPPORTED, check_architecture, text_config, write_hparams  # noqa: F401
from preflexor_local.errors import InvalidModelError, UsageError

FLOAT_TYPES = ("f32", "f16", "bf16", "q8_0")
# out types made by llama.cpp's quantizer (llama_cpp.LLAMA_FTYPE_MOSTLY_<NAME>)
LLAMA_QUANT_TYPES = ("q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_m", "q3_k_s", "q3_k_l", "q2_k", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "iq4_xs")
OUT_TYPES = FLOAT_TYPES + LLAMA_QUANT_TYPES
_SKIP = ("rotary_emb.inv_freq", "vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector.")


@dataclass
class GGUFResult:
    output: str
    arch: str
    outtype: str
    tensors: int
    bytes: int
    seconds: float
    tokenizer: str
    pre_tokenizer: str
    tag_ids: dict[str, int | None]
    chat_template: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _permute(w, n_head: int):
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class _Source:
    """Tensors of a checkpoint by name, loaded one at a time."""

    def __init__(self, files: list[Path]):
        self.files = files
        self.where: dict[str, Path] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._bins: dict[Path, dict] = {}
        for f in files:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(f), framework="pt") as fh:
                    for k in fh.keys():
                        self.where[k] = f
                        self.shapes[k] = tuple(fh.get_slice(k).get_shape())
            else:
                for k, v in self._bin(f).items():
                    self.where[k] = f
                    self.shapes[k] = tuple(v.shape)

    def _bin(self, f: Path) -> dict:
        if f not in self._bins:
            import torch

            self._bins[f] = torch.load(f, map_location="cpu", mmap=True, weights_only=True)
        return self._bins[f]

    def get(self, name: str):
        """float32 numpy array of tensor ``name``."""
        import torch

        f = self.where[name]
        if f.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as fh:
                t = fh.get_tensor(name)
        else:
            t = self._bin(f)[name]
        return t.to(torch.float32).numpy()


def _normalise_name(name: str) -> str | None:
    """Map Gemma 3 multimodal and other prefixes to the plain ``model.…`` layout; None to skip."""
    if any(name.startswith(p) or p in name and p.startswith("rotary") for p in _SKIP):
        return None
    for prefix, repl in (("model.language_model.", "model."), ("language_model.model.", "model."), ("language_model.lm_head.", "lm_head.")):
        if name.startswith(prefix):
            return repl + name[len(prefix) :]
    return name


def _plan_type(outtype: str, shape: tuple[int, ...], name: str):
    import gguf

    Q = gguf.GGMLQuantizationType
    if len(shape) < 2 or outtype == "f32" or name.endswith("_norm.weight") or "rope_freqs" in name:
        return Q.F32
    if outtype == "f16":
        return Q.F16
    if outtype == "bf16":
        return Q.BF16
    if outtype == "q8_0":
        return Q.Q8_0 if shape[-1] % 32 == 0 else Q.F16
    raise AssertionError(outtype)


def _encode(arr, qtype):
    import gguf
    import numpy as np

    Q = gguf.GGMLQuantizationType
    if qtype == Q.F32:
        return np.ascontiguousarray(arr, dtype=np.float32)
    if qtype == Q.F16:
        return np.ascontiguousarray(arr, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), qtype)


def write_float_gguf(
    src_dir: Path, out_path: Path, outtype: str, *, name: str | None = None, quiet: bool = False, chat_template: str | None = None
) -> GGUFResult:
    """The float/q8_0 writer (no atomic rename here: ``convert_to_gguf`` wraps it)."""
    import gguf
    import numpy as np
    from transformers import AutoConfig, AutoTokenizer

    from preflexor_local.convert._common import progress, read_hf_config, weight_files
    from preflexor_local.convert.gguf_vocab import build_vocab
    from preflexor_local.format import ThinkingFormat

    t0 = time.perf_counter()
    cfg_json = read_hf_config(src_dir)
    hf_name, arch, family = check_architecture(cfg_json)
    hf_cfg = text_config(AutoConfig.from_pretrained(src_dir))
    notes: list[str] = []
    source = _Source(weight_files(src_dir))
    # --- plan: names, shapes and types from headers only
    n_blocks = hf_cfg.num_hidden_layers
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    name_map = gguf.get_tensor_name_map(arch_enum, n_blocks)
    allowed = set(gguf.MODEL_TENSORS[arch_enum])
    tied = bool(getattr(hf_cfg, "tie_word_embeddings", False) or cfg_json.get("tie_word_embeddings", False))
    plan: list[tuple[str, str, tuple[int, ...], object, Callable | None]] = []  # (src, dst, shape, qtype, transform)
    n_head = hf_cfg.num_attention_heads
    n_kv = getattr(hf_cfg, "num_key_value_heads", None) or n_head
    vocab_rows = None
    unmapped = []
    for src_name in source.shapes:
        norm = _normalise_name(src_name)
        if norm is None:
            continue
        if norm == "lm_head.weight" and tied:
            continue
        found = name_map.get_type_and_name(norm, try_suffixes=(".weight", ".bias"))
        if found is None or found[0] not in allowed:
            unmapped.append(src_name)
            continue
        ttype, dst = found
        shape = source.shapes[src_name]
        transform = None
        if family == "llama" and norm.endswith("self_attn.q_proj.weight"):
            transform = lambda w, h=n_head: _permute(w, h)  # noqa: E731
        elif family == "llama" and norm.endswith("self_attn.k_proj.weight"):
            transform = lambda w, h=n_kv: _permute(w, h)  # noqa: E731
        elif family == "gemma3" and norm.endswith("norm.weight"):
            transform = lambda w: w + 1.0  # noqa: E731
        if ttype == gguf.MODEL_TENSOR.TOKEN_EMBD:
            vocab_rows = shape[0]
        plan.append((src_name, dst, shape, _plan_type(outtype, shape, dst), transform))
    if unmapped:
        raise InvalidModelError(
            f"{len(unmapped)} tensor(s) of {hf_name} have no GGUF name, e.g. {unmapped[:3]}",
            hint="the checkpoint has layers this converter does not know (adapter not merged? use `convert merge` first)",
        )
    if vocab_rows is None:
        raise InvalidModelError(f"{src_dir} has no token embedding tensor", hint="is this a complete checkpoint?")
    # --- tokenizer
    tok = AutoTokenizer.from_pretrained(src_dir)
    gen_eos = []
    gen_file = src_dir / "generation_config.json"
    if gen_file.is_file():
        import json

        e = json.loads(gen_file.read_text()).get("eos_token_id")
        gen_eos = e if isinstance(e, list) else [e] if isinstance(e, int) else []
    vocab = build_vocab(src_dir, vocab_rows, tok, gen_eos)
    if chat_template is not None:
        vocab.chat_template = chat_template
        vocab.notes = [n for n in vocab.notes if "no chat template" not in n]
    notes += vocab.notes
    fmt = ThinkingFormat()
    tag_ids = {}
    for tag in fmt.tags:
        ids = tok.encode(tag, add_special_tokens=False)
        tag_ids[tag] = ids[0] if len(ids) == 1 else None
    if any(v is None for v in tag_ids.values()):
        notes.append("the thinking tags are not single tokens in this tokenizer (run `convert add-tokens` first for a thinking model)")
    # --- write
    writer = gguf.GGUFWriter(str(out_path), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or src_dir.name)
    ftype = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[outtype]
    extra = write_hparams(writer, family, hf_cfg, notes)
    writer.add_vocab_size(vocab_rows)
    writer.add_file_type(ftype)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    vocab.add_to(writer)
    for tag, i in tag_ids.items():
        if i is not None and vocab.types[i] not in (3, 4):
            raise InvalidModelError(f"tag {tag!r} (id {i}) would be a plain token in GGUF", hint="add it as a special token with `convert add-tokens`")
    for ename, arr in extra:
        plan.append(("", ename, arr.shape, gguf.GGMLQuantizationType.F32, None))
    extras = dict(extra)
    for _src, dst, shape, qtype, _t in plan:
        byte_shape = (
            gguf.quants.quant_shape_to_byte_shape(shape, qtype) if qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else shape
        )
        itemsize = {gguf.GGMLQuantizationType.F32: 4, gguf.GGMLQuantizationType.F16: 2}.get(qtype, 1)
        dtype = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}.get(qtype, np.uint8)
        writer.add_tensor_info(dst, byte_shape, np.dtype(dtype), int(np.prod(byte_shape)) * itemsize, raw_dtype=qtype if dtype is np.uint8 else None)
    total = 0
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with progress(len(plan), f"writing {out_path.name}", quiet) as bar:
            for src_name, dst, shape, qtype, transform in plan:
                arr = extras[dst] if not src_name else source.get(src_name)
                if transform is not None:
                    arr = transform(arr)
                data = _encode(arr, qtype)
                writer.write_tensor_data(data)
                total += data.nbytes
                bar.update(1)
                del arr, data
    finally:
        writer.close()
    return GGUFResult(
        str(out_path),
        arch,
        outtype,
        len(plan),
        out_path.stat().st_size,
        time.perf_counter() - t0,
        vocab.kind,
        vocab.pre,
        tag_ids,
        bool(vocab.chat_template),
        notes,
    )


def default_output(src: Path, outtype: str) -> Path:
    return Path.cwd() / f"{src.resolve().name}-{outtype}.gguf"


def convert_to_gguf(
    src: str | Path,
    out: str | Path | None = None,
    outtype: str = "f16",
    *,
    force: bool = False,
    name: str | None = None,
    quiet: bool = False,
    chat_template: str | None = None,
    intermediate: str | None = None,
    threads: int | None = None,
) -> GGUFResult:
    """Convert the HF checkpoint ``src`` to a GGUF file (atomically); returns what was written.

    ``outtype``: f32, f16, bf16, q8_0 (written directly) or a llama.cpp type such
    as q4_k_m, q5_k_m, q6_k (quantised in-process from a float temp file,
    ``intermediate`` f32 or f16; default f32 below 2 GB of f32 weights, else f16).
    """
    from preflexor_local.convert._common import atomic_file, check_output, check_safetensors, info, read_hf_config, read_template_arg, weight_files

    outtype = outtype.lower()
    if outtype not in OUT_TYPES:
        raise UsageError(f"unknown --outtype {outtype!r}", hint=f"choose one of: {', '.join(OUT_TYPES)}")
    src = Path(src).expanduser()
    cfg = read_hf_config(src)
    check_architecture(cfg)  # refuse by name before any heavy work
    files = weight_files(src)
    check_safetensors(files)
    out = check_output(out or default_output(src, outtype), force)
    chat_template = read_template_arg(chat_template)
    if outtype in FLOAT_TYPES:
        with atomic_file(out) as tmp:
            res = write_float_gguf(src, tmp, outtype, name=name, quiet=quiet, chat_template=chat_template)
        res.output = str(out)
    else:
        from preflexor_local.convert.quantize import quantize_gguf

        t0 = time.perf_counter()
        if intermediate is None:
            n_bytes = sum(f.stat().st_size for f in files)
            intermediate = "f32" if n_bytes * (4 / 2) < 2e9 else "f16"
        float_tmp = out.with_name(f".{out.name}.{intermediate}.part")
        try:
            res = write_float_gguf(src, float_tmp, intermediate, name=name, quiet=quiet, chat_template=chat_template)
            info(f"quantising to {outtype} with llama.cpp ...", quiet)
            with atomic_file(out) as tmp:
                log = quantize_gguf(float_tmp, tmp, outtype, threads=threads, quiet=quiet)
        finally:
            with contextlib.suppress(FileNotFoundError):
                float_tmp.unlink()
        res.output, res.outtype, res.bytes, res.seconds = str(out), outtype, out.stat().st_size, time.perf_counter() - t0
        res.notes.append(f"quantised by llama.cpp from an {intermediate} intermediate")
        fallbacks = [ln for ln in log if "falling back" in ln]
        if fallbacks:
            res.notes.append(
                f"llama.cpp used a fallback type for {len(fallbacks)} tensor(s) whose rows are not a multiple of 256, "
                f"e.g. {' '.join(fallbacks[0].split('warning:')[-1].split())}"
            )
    info(f"wrote {out} ({res.bytes / 2**20:.1f} MiB, {res.tensors} tensors, {res.seconds:.1f} s)", quiet)
    return res


def _command():
    import json

    import click

    @click.command("gguf")
    @click.argument("model_dir", type=click.Path(path_type=Path))
    @click.option("-o", "--output", type=click.Path(path_type=Path), help="GGUF file to write (default: ./<model>-<outtype>.gguf).")
    @click.option("--outtype", default="f16", show_default=True, type=click.Choice(OUT_TYPES, case_sensitive=False), help="Weight type.")
    @click.option("--chat-template", help="A .jinja file (or template text) to embed instead of the checkpoint's.")
    @click.option("--name", help="general.name to record (default: the folder name).")
    @click.option("--intermediate", type=click.Choice(["f32", "f16"]), help="Float file that K-quants are made from (default: f32 if small).")
    @click.option("--threads", type=int, help="Threads for llama.cpp's quantizer.")
    @click.option("--force", is_flag=True, help="Replace the output file if it exists.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
    def gguf_cmd(model_dir, output, outtype, chat_template, name, intermediate, threads, force, as_json):
        """Convert the Hugging Face checkpoint MODEL_DIR to GGUF (tags, tokenizer and chat template kept)."""
        res = convert_to_gguf(
            model_dir, output, outtype, force=force, name=name, quiet=as_json, chat_template=chat_template, intermediate=intermediate, threads=threads
        )
        if as_json:
            click.echo(json.dumps(res.to_dict()))
            return
        click.echo(f"{res.output}\t{res.arch}\t{res.outtype}\t{res.bytes / 2**20:.1f} MiB\t{res.seconds:.1f} s")
        click.echo(f"tokenizer: {res.tokenizer} (pre-tokenizer {res.pre_tokenizer}); chat template: {'yes' if res.chat_template else 'no'}")
        click.echo("tags: " + ", ".join(f"{t}={i}" for t, i in res.tag_ids.items()))
        for n in res.notes:
            click.echo(f"note: {n}")

    return gguf_cmd


command = _command()

if __name__ == "__main__":
    from preflexor_local.convert._common import run_script

    run_script(command)
