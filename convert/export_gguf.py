"""Merge LoRA adapters into a base model and write one GGUF that every llama.cpp runtime loads (``export gguf``).

The math. A LoRA GGUF (``convert lora-gguf``, or llama.cpp's ``convert_lora_to_gguf.py``) holds, for each
targeted base tensor ``W`` (ne ``[in, out]``, numpy shape ``(out, in)``), ``lora_a`` (ne ``[in, r]``, numpy
``(r, in)``) and ``lora_b`` (ne ``[r, out]``, numpy ``(out, r)``), and one ``adapter.lora.alpha``. llama.cpp
adds ``s · B (A x)`` at run time with ``s = user_scale · alpha / r`` (``r = ne[0]`` of B; ``s = user_scale``
when alpha is 0); every other factor (rsLoRA's ``alpha / sqrt(r)``, per-module alpha and rank patterns) is
already folded into B by the writer. The merge writes, for every targeted tensor,

    W' = W + Σ_adapters s · B·A

in float32 from W's decoded values (``gguf.quants.dequantize``, exact: a quantized tensor *is* those values),
so ``W' x`` is the runtime's ``W x + s · B (A x)`` up to float rounding and the re-encoding of ``W'``.

Re-encoding (``--outtype``):

* ``same`` (default): every tensor keeps its type. Untouched tensors are copied byte for byte; each merged
  tensor is encoded by llama.cpp's ``ggml_quantize_chunk`` (``ggml_quants.py``), the per-tensor function
  ``llama_model_quantize`` runs, without an importance matrix, in ``--merged-type``: ``q8_0`` (default) or
  ``f16``/``f32`` where that has more bits than the tensor's own type, or ``same`` (its own type). Why not its
  own type by default: 4- and 5-bit grids round a small adapter's change away. Measured on Gemma 3 270M Q4_K_M +
  the demo adapter (next-token logits of three prompts, merged against the runtime adapter; the figures of
  ``tests/test_lora_gguf.py``): ``same`` keeps scale fit 0.76, correlation 0.90; ``q8_0`` 0.93 and 0.988 for
  +16 MB (6 %); ``f16`` 0.97 and 0.985 for +56 MB. The greedy token is the runtime's in all three. Re-encoding
  an unchanged tensor gives its bytes back (Q5_0, Q8_0) or is within one rounding step (Q4_K, Q6_K), so the
  cost is the quantization of the merged tensors alone: seconds for a small model, no float copy of the rest.
* ``f32``: every tensor decoded to float32 (4 bytes a weight, in memory while it is written).
* ``f16``, ``q8_0``, ``q4_k_m``, ``q5_k_m``, ``q6_k``: that f32 file, then ``llama_model_quantize`` on the whole
  file, as ``convert gguf`` does. From an already-quantized base every tensor is quantized a second time (the
  errors add): meant for f16/f32 bases and Hugging Face checkpoints; keep ``same`` for a quantized base.

From a Hugging Face checkpoint: PEFT adapters at scale 1 are merged by PEFT (``convert merge``, which also
handles DoRA and resized vocabularies) and ``convert gguf`` writes the result (``same``: the checkpoint's
dtype). With a LoRA GGUF adapter or a scale, the checkpoint becomes an f32 GGUF first (PEFT adapters become
LoRA GGUFs against it) and is merged as above. A PEFT adapter on a GGUF base is converted the same way.

Metadata: every key of the base is copied (tokenizer, special tokens, the thinking tags, context length), and
the adapter's recorded chat format wins as it does at load time (``backends/llamacpp.py``): its
``tokenizer.chat_template`` and ``preflexor.chat_template`` become the merged file's. ``preflexor.merged_adapters``
lists what was merged, with scales.

Refused by name: a base that is not a model GGUF, an adapter that is not a LoRA GGUF or is for another
architecture, an aLoRA (it acts only after its invocation tokens; merged, it would act everywhere), a LoRA on
``token_embd`` (llama.cpp stores its factors flipped; not merged here), an adapter tensor the base lacks or whose shape
does not fit it (an adapter for another base), and under ``same`` a base type that llama.cpp cannot write
without an importance matrix (IQ types).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import _bootstrap  # noqa: F401  (run from a checkout)

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from preflexor_local.errors import InvalidModelError, UsageError

OUT_TYPES = ("same", "f32", "f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k")
MERGED_TYPES = ("q8_0", "f16", "f32", "same")


@dataclass
class AdapterArg:
    """One ``--adapter``: a LoRA GGUF file or a PEFT/MLX adapter folder, with its scale."""

    path: Path
    scale: float = 1.0

    @property
    def is_gguf(self) -> bool:
        return self.path.is_file()

    @property
    def label(self) -> str:
        return f"{self.path.name}:{self.scale:g}"


@dataclass
class ExportResult:
    output: str = ""
    outtype: str = ""
    base: str = ""
    adapters: list[str] = field(default_factory=list)
    merged_tensors: int = 0
    copied_tensors: int = 0
    chat_template: str | None = None  # the known format's name, when it is one
    bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def parse_adapter_arg(text: str | Path) -> AdapterArg:
    """``FILE.gguf``, ``FILE.gguf:SCALE`` (the rule of ``ask --adapter``) or a PEFT/MLX folder, optionally ``:SCALE``."""
    from preflexor_local.backends.llamacpp import parse_adapter

    text = str(text)
    head, sep, tail = text.rpartition(":")
    if Path(text).expanduser().is_dir():
        path, scale = Path(text).expanduser(), 1.0
    elif sep and head and Path(head).expanduser().is_dir():
        try:
            path, scale = Path(head).expanduser(), float(tail)
        except ValueError:
            raise UsageError(f"adapter scale {tail!r} is not a number", hint="pass FOLDER:SCALE, e.g. ./adapter:0.5") from None
    else:
        path, scale = parse_adapter(text)  # a file, or the one-line "adapter file not found"
    if not math.isfinite(scale):
        raise UsageError(f"adapter scale must be a finite number, not {scale}", hint="pass FILE.gguf:SCALE, e.g. adapter.gguf:0.5")
    return AdapterArg(path, scale)


def check_outtype(outtype: str, merged_type: str = "q8_0") -> str:
    if outtype.lower() not in OUT_TYPES:
        raise UsageError(f"unknown --outtype {outtype!r}", hint=f"choose one of: {', '.join(OUT_TYPES)}")
    if merged_type not in MERGED_TYPES:
        raise UsageError(f"unknown --merged-type {merged_type!r}", hint=f"choose one of: {', '.join(MERGED_TYPES)}")
    return outtype.lower()


@dataclass
class _Lora:
    path: Path
    scale: float
    alpha: float
    layout: object  # gguf_copy.Layout of the adapter file
    pairs: dict  # base tensor name -> (lora_a, lora_b) as gguf_copy.Tensor
    template_name: str | None
    template_source: str | None


def _read_lora(adapter: AdapterArg, arch: str) -> _Lora:
    from preflexor_local.convert.gguf_copy import read_layout
    from preflexor_local.gguf_meta import read_gguf

    info = read_gguf(adapter.path)  # names a bad or truncated file first
    if info.get("general.type") != "adapter" or info.get("adapter.type") != "lora":
        raise InvalidModelError(
            f"{adapter.path} is not a LoRA adapter GGUF (general.type {info.get('general.type')!r})",
            hint="write one with `preflexor-local convert lora-gguf ADAPTER --base BASE.gguf -o adapter.gguf`, or pass the PEFT folder",
        )
    if info.architecture != arch:
        raise InvalidModelError(
            f"adapter {adapter.path.name} is for {info.architecture!r}, the base is {arch!r}", hint="pass the base the adapter was trained on"
        )
    if "adapter.alora.invocation_tokens" in info.metadata:
        raise InvalidModelError(
            f"cannot merge {adapter.path.name}: it is an activated LoRA (aLoRA), which acts only after its invocation tokens",
            hint="merged it would act on every token; serve it as an adapter (llama-server --lora)",
        )
    layout = read_layout(adapter.path)
    tensors = {t.name: t for t in layout.tensors}
    other = sorted(n for n in tensors if not n.endswith((".lora_a", ".lora_b")))
    if other:
        raise InvalidModelError(f"cannot merge {adapter.path.name}: tensor {other[0]} is not a LoRA factor (.lora_a / .lora_b)")
    pairs = {}
    for name in sorted(n[: -len(".lora_a")] for n in tensors if n.endswith(".lora_a")):
        if name + ".lora_b" not in tensors:
            raise InvalidModelError(f"cannot merge {adapter.path.name}: {name}.lora_a has no {name}.lora_b")
        pairs[name] = (tensors[name + ".lora_a"], tensors[name + ".lora_b"])
    if not pairs:
        raise InvalidModelError(f"cannot merge {adapter.path.name}: it holds no LoRA tensors")
    alpha = float(info.get("adapter.lora.alpha", 0.0) or 0.0)
    return _Lora(adapter.path, adapter.scale, alpha, layout, pairs, info.get("preflexor.chat_template"), info.get("tokenizer.chat_template"))


def _check_fits(lora: _Lora, base_tensors: dict) -> None:
    """llama.cpp's own shape rule (``llama-adapter.cpp``), with the tensor named when it fails."""
    for name, (a, b) in lora.pairs.items():
        if name == "token_embd.weight":  # llama.cpp stores its A and B flipped and gathers rows of A
            raise InvalidModelError(f"cannot merge {lora.path.name}: a LoRA on {name} (the embedding) is not merged here", hint="apply it at load instead")
        w = base_tensors.get(name)
        if w is None:
            raise InvalidModelError(
                f"adapter {lora.path.name} does not fit this base: it targets {name}, which the base does not have",
                hint="pass the base the adapter was trained on",
            )
        w_ne, a_ne, b_ne = list(w.ne), list(a.ne), list(b.ne)
        if len(w_ne) != 2 or len(a_ne) != 2 or len(b_ne) != 2 or a_ne[0] != w_ne[0] or b_ne[1] != w_ne[1] or a_ne[1] != b_ne[0]:
            raise InvalidModelError(
                f"adapter {lora.path.name} does not fit this base: {name} has ne {w_ne}, its lora_a {a_ne} and lora_b {b_ne} need ne [{a_ne[0]}, {b_ne[-1]}]",
                hint="the adapter was trained for another base (other shapes); pass the base it was trained on",
            )


def _scale(lora: _Lora, b) -> float:
    rank = b.ne[0]  # as llama.cpp reads it
    return lora.scale * lora.alpha / rank if lora.alpha else lora.scale


def _merged_type(t, merged_type: str):
    """The type a merged tensor is written in: its own, or ``merged_type`` where that keeps more bits per weight."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if merged_type == "same":
        return t.qtype
    want = Q[merged_type.upper()]
    if want == Q.Q8_0 and t.ne[0] % 32:  # Q8_0 blocks are 32 weights of a row
        want = Q.F16
    bits = lambda q: gguf.GGML_QUANT_SIZES[q][1] / gguf.GGML_QUANT_SIZES[q][0]  # noqa: E731  (bytes per weight)
    return want if bits(want) > bits(t.qtype) else t.qtype


def merge_gguf(
    base: Path,
    adapters: list[AdapterArg],
    out: Path,
    outtype: str = "same",
    *,
    merged_type: str = "q8_0",
    chat_template: str | None = None,
    quiet: bool = False,
) -> ExportResult:
    """Write ``out`` = the GGUF ``base`` with the LoRA GGUF ``adapters`` merged (see the module docstring)."""
    import gguf

    from preflexor_local.convert import ggml_quants
    from preflexor_local.convert._common import atomic_file, info
    from preflexor_local.convert.export_templates import resolve
    from preflexor_local.convert.gguf_copy import entry, read_layout, write_gguf
    from preflexor_local.gguf_meta import read_gguf

    t0 = time.perf_counter()
    meta = read_gguf(base)
    if meta.get("general.type", "model") != "model":
        raise InvalidModelError(f"{base} is not a model GGUF (general.type {meta.get('general.type')!r})", hint="pass the base model's .gguf as MODEL")
    layout = read_layout(base)
    base_tensors = {t.name: t for t in layout.tensors}
    loras = [_read_lora(a, meta.architecture or "") for a in adapters]
    for lora in loras:
        _check_fits(lora, base_tensors)
    targets = {name for lora in loras for name in lora.pairs}
    if outtype == "same":
        for name in sorted(targets):
            ggml_quants.check_encodable(_merged_type(base_tensors[name], merged_type), name)
    # The adapter's recorded chat format wins (as at load time), then the base's own.
    recorded = next((lo for lo in loras if lo.template_name or lo.template_source), None)
    name, source = resolve(
        chat_template,
        recorded.template_name if recorded else meta.get("preflexor.chat_template"),
        recorded.template_source if recorded else meta.get("tokenizer.chat_template"),
    )
    kv = dict(layout.entries)  # every entry of the base, byte for byte, in its order
    if source:
        kv["tokenizer.chat_template"] = entry("tokenizer.chat_template", source)
    if name:
        kv["preflexor.chat_template"] = entry("preflexor.chat_template", name)
    if loras:
        label = f"{meta.get('general.name') or base.stem} + {', '.join(lo.path.stem for lo in loras)}"
        kv["general.name"] = entry("general.name", label)
        kv["preflexor.merged_adapters"] = entry("preflexor.merged_adapters", [f"{lo.path.name}:{lo.scale:g}" for lo in loras])
    res = ExportResult(outtype=outtype, base=str(base), adapters=[a.label for a in adapters], chat_template=name)
    floats = outtype != "same"
    if floats:
        kv["general.file_type"] = entry("general.file_type", int(gguf.LlamaFileType.ALL_F32))
    info(f"merging {len(loras)} adapter(s) into {len(targets)} tensors of {base.name} ({outtype}) ...", quiet)
    planned = []
    for t in layout.tensors:
        if t.name not in targets and not floats:
            planned.append((t.name, t.ne, t.qtype, layout.data(t)))  # byte for byte
            res.copied_tensors += 1
            continue
        w = ggml_quants.decode(layout.data(t), t.qtype, t.name)
        for lora in loras:
            if t.name in lora.pairs:
                a, b = lora.pairs[t.name]
                a_w = ggml_quants.decode(lora.layout.data(a), a.qtype, a.name)
                b_w = ggml_quants.decode(lora.layout.data(b), b.qtype, b.name)
                w = w + _scale(lora, b) * (b_w @ a_w)
        res.merged_tensors += t.name in targets
        qtype = gguf.GGMLQuantizationType.F32 if floats else _merged_type(t, merged_type)
        planned.append((t.name, t.ne, qtype, ggml_quants.encode(w, qtype)))
    if outtype in ("same", "f32"):
        with atomic_file(out) as tmp:
            write_gguf(layout, tmp, kv, planned)
    else:
        from preflexor_local.convert.quantize import quantize_gguf

        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp_dir:
            f32 = Path(tmp_dir) / "merged-f32.gguf"
            write_gguf(layout, f32, kv, planned)
            del planned
            info(f"quantizing to {outtype} with llama.cpp ...", quiet)
            with atomic_file(out) as tmp:
                quantize_gguf(f32, tmp, outtype, quiet=quiet)
        if meta.get("general.file_type", 0) not in (0, 1, 32):
            res.notes.append(f"the base was already quantized: every tensor was quantized again to {outtype}; --outtype same avoids that")
    res.output, res.bytes, res.seconds = str(out), out.stat().st_size, round(time.perf_counter() - t0, 3)
    info(f"wrote {out} ({res.bytes / 2**20:.1f} MiB, {res.merged_tensors} merged tensors, {res.seconds:.1f} s)", quiet)
    return res


def _hf_dtype(cfg: dict) -> str:
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "float16")
    return {"float32": "f32", "bfloat16": "bf16"}.get(dtype, "f16")


def resolve_inputs(model: str, adapters: list[AdapterArg], tmp: Path, *, hf_type: str = "f32", quiet: bool = False) -> tuple[Path, list[AdapterArg]]:
    """The base GGUF and the LoRA GGUFs for ``model`` + ``adapters``, converting what is not GGUF into ``tmp``.

    ``model``: a GGUF file, a Hugging Face checkpoint folder (written as an ``hf_type`` GGUF; ``same``: its
    dtype), or the default model (``default``: the embedded Gemma 3 270M with the demo adapter unless adapters
    are given; ``gemma3-270m-base``: without it)."""
    from preflexor_local.models import BASE_ALIAS, default_model_path, demo_adapter_path, parse_spec

    spec = parse_spec(model)  # "model file not found: …" for a missing base
    if spec.kind == "url":
        raise UsageError(f"cannot export {model}: a server's model is not a local file", hint="pass a .gguf file or a Hugging Face checkpoint folder")
    if spec.kind == "default":
        base = default_model_path(quiet=quiet)
        if spec.text != BASE_ALIAS and not adapters and demo_adapter_path() is not None:
            adapters = [AdapterArg(demo_adapter_path())]
    elif spec.kind == "dir":
        from preflexor_local.convert._common import read_hf_config
        from preflexor_local.convert.hf_to_gguf import convert_to_gguf

        base = tmp / "base.gguf"
        convert_to_gguf(spec.path, base, _hf_dtype(read_hf_config(spec.path)) if hf_type == "same" else hf_type, force=True, quiet=quiet)
    else:
        from preflexor_local.gguf_meta import read_gguf

        base = spec.path
        read_gguf(base)  # "not a GGUF file" / "truncated" before any work
    out = []
    for i, a in enumerate(adapters):
        if not a.is_gguf:  # a PEFT or MLX folder: a LoRA GGUF against this very base (exact, f32 factors)
            from preflexor_local.convert.lora_gguf import convert_lora_to_gguf

            converted = tmp / f"{a.path.name}-{i}.gguf"
            convert_lora_to_gguf(a.path, base, converted, "f32", quiet=True)
            a = AdapterArg(converted, a.scale)
        out.append(a)
    return base, out


def export_gguf(
    model: str | Path,
    adapters: tuple[str, ...] = (),
    out: str | Path | None = None,
    outtype: str = "same",
    *,
    merged_type: str = "q8_0",
    chat_template: str | None = None,
    force: bool = False,
    quiet: bool = False,
) -> ExportResult:
    """``export gguf``: one GGUF with the adapters merged, from a GGUF or a Hugging Face checkpoint (module docstring)."""
    from preflexor_local.convert._common import check_output, read_hf_config
    from preflexor_local.convert.export_templates import resolve
    from preflexor_local.models import parse_spec

    outtype = check_outtype(outtype, merged_type)
    resolve(chat_template, None, None)  # an unknown --chat-template is refused before any work
    if out is None:
        raise UsageError("no output file given", hint="pass -o OUT.gguf")
    spec = parse_spec(str(model))  # a missing base is refused here
    args = [parse_adapter_arg(a) for a in adapters]  # and a missing adapter here
    out = check_output(out, force)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as tmp_dir:
        tmp = Path(tmp_dir)
        if spec.kind == "dir":
            cfg = read_hf_config(spec.path)
            outtype = _hf_dtype(cfg) if outtype == "same" else outtype
            if all((a.path / "adapter_config.json").is_file() and a.scale == 1.0 for a in args):  # PEFT folders at scale 1
                return _export_hf_with_peft(spec.path, args, out, outtype, tmp, chat_template, quiet)
        base, loras = resolve_inputs(str(model), args, tmp, hf_type="f32", quiet=quiet)
        res = merge_gguf(base, loras, out, outtype, merged_type=merged_type, chat_template=chat_template, quiet=quiet)
    res.adapters = [a.label for a in args] or res.adapters  # as the user named them, not their converted copies
    if spec.kind == "dir":
        res.base = str(spec.path)
    return res


def _export_hf_with_peft(src: Path, adapters: list[AdapterArg], out: Path, outtype: str, tmp: Path, chat_template, quiet) -> ExportResult:
    """A Hugging Face checkpoint + PEFT adapters: merged by PEFT (``convert merge``), written by ``convert gguf``."""
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf
    from preflexor_local.convert.merge import merge_adapter
    from preflexor_local.prompt import KNOWN_TEMPLATES

    t0 = time.perf_counter()
    current, notes = src, []
    for i, a in enumerate(adapters):
        merged = merge_adapter(current, a.path, tmp / f"merged-{i}", quiet=quiet)
        current, notes = Path(merged.output), notes + merged.notes
    gguf_type = outtype
    template = KNOWN_TEMPLATES[chat_template][0] if chat_template else None
    res = convert_to_gguf(current, out, gguf_type, force=True, quiet=quiet, chat_template=template)
    from preflexor_local.convert.export_templates import known_name

    source = template or _tokenizer_template(current)
    return ExportResult(
        output=str(out),
        outtype=gguf_type,
        base=str(src),
        adapters=[a.label for a in adapters],
        merged_tensors=0,
        copied_tensors=res.tensors,
        chat_template=chat_template or known_name(source),
        bytes=out.stat().st_size,
        seconds=round(time.perf_counter() - t0, 3),
        notes=[*notes, "merged by PEFT (convert merge), written by convert gguf", *res.notes],
    )


def _tokenizer_template(folder: Path) -> str | None:
    import json

    path = folder / "tokenizer_config.json"
    if path.is_file():
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    jinja = folder / "chat_template.jinja"
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else None
