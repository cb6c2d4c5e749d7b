"""PEFT (or MLX) LoRA adapter -> llama.cpp LoRA GGUF, applied at load time on any copy of the base (quantized too).

The math. PEFT adds ``s * B @ A`` to a linear weight ``W`` (``out x in``), with
``A = lora_A`` (``r x in``), ``B = lora_B`` (``out x r``) and ``s = alpha / r``
(``alpha / sqrt(r)`` with rsLoRA; per-module ``alpha_pattern``/``rank_pattern``
honoured). llama.cpp adds ``scale * B @ A`` with ``scale = user_scale *
adapter.lora.alpha / r`` and ``r = ne[0]`` of B, and checks ``W.ne[0] ==
A.ne[0]`` (in), ``W.ne[1] == B.ne[1]`` (out), ``A.ne[1] == B.ne[0]`` (r).
A numpy array of shape ``(rows, cols)`` has ``ne = [cols, rows]``, so PEFT's
``A`` and ``B`` are written as they are (untransposed). We write
``adapter.lora.alpha = alpha`` (the config's ``lora_alpha``) and fold any other
scale into B: ``B' = B * s / (alpha / r)``, so every module keeps exactly its
PEFT scale. For the Llama family, llama.cpp's ``q``/``k`` rows are permuted
from Hugging Face's layout (see ``hf_to_gguf``); ``W + B A`` permuted by rows is
``W_p + B_p A``, so B gets the same row permutation and A none.

Names: ``base_model.model.<module>.lora_A.weight`` -> the base GGUF's tensor
name for ``<module>.weight`` (``gguf.TensorNameMap``) + ``.lora_a``; every target
must exist in the base GGUF with the shape llama.cpp checks.

Refused by name: DoRA (llama.cpp has no magnitude vector), adapters that train
embedding/output rows (new tokens: a LoRA GGUF cannot add rows), ``modules_to_save``,
LoRA biases, and architectures the GGUF converter does not support.

The chat template the adapter was trained with is recorded as
``tokenizer.chat_template`` (its Jinja source) and ``preflexor.chat_template``
(its name), so ``ask`` serves the adapter with the prompt it learned.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import _bootstrap  # noqa: F401  (run from a checkout)

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from preflexor_local.errors import InvalidModelError, UsageError

OUT_TYPES = ("f32", "f16", "q8_0")
_PEFT_PREFIX = "base_model.model."


@dataclass
class LoraGGUFResult:
    output: str = ""
    arch: str = ""
    tensors: int = 0
    rank: int = 0
    alpha: float = 0.0
    bytes: int = 0
    seconds: float = 0.0
    chat_template: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _refuse(what: str, why: str, hint: str | None = None):
    raise InvalidModelError(f"cannot write this adapter as a llama.cpp LoRA GGUF: {what} ({why})", hint=hint)


def _peft_dir(adapter: Path, tmp_root: Path) -> Path:
    """The PEFT adapter folder for ``adapter``; an MLX adapter is converted first (exact, see mlx_adapter)."""
    if (adapter / "adapters.safetensors").is_file():
        from preflexor_local.convert.mlx_adapter import MlxToPeftConfig, convert_mlx_adapter_to_peft

        return convert_mlx_adapter_to_peft(MlxToPeftConfig(adapter, tmp_root / "peft", quiet=True))
    if not (adapter / "adapter_config.json").is_file():
        raise InvalidModelError(
            f"{adapter} is not a PEFT or MLX adapter folder (no adapter_config.json)",
            hint="pass the `adapter` folder written by `train` (or an mlx_lm.lora adapter folder)",
        )
    return adapter


def _read_peft(path: Path) -> tuple[dict, dict]:
    from safetensors.numpy import load_file

    cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    if cfg.get("peft_type", "LORA") != "LORA":
        _refuse(f"peft_type {cfg.get('peft_type')}", "only LoRA adapters exist in llama.cpp")
    if cfg.get("use_dora"):
        _refuse("DoRA", "llama.cpp's LoRA has no magnitude vector", "merge it instead: preflexor-local convert merge, then convert gguf")
    if cfg.get("modules_to_save"):
        _refuse(f"modules_to_save {cfg['modules_to_save']}", "whole trained modules are not LoRA deltas", "merge it instead")
    if cfg.get("trainable_token_indices"):
        _refuse(
            "trained token rows (new tokens)",
            "a LoRA GGUF cannot add or change embedding rows",
            "train with --tag-tokens plain, or merge and convert the whole model",
        )
    if cfg.get("bias", "none") != "none":
        _refuse(f"bias {cfg['bias']!r}", "LoRA GGUF carries no biases")
    files = sorted(path.glob("adapter_model*.safetensors"))
    if not files:
        raise InvalidModelError(f"{path} has no adapter_model.safetensors", hint="save the adapter with safetensors (PEFT's default)")
    tensors: dict = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return cfg, tensors


def _module_scale(cfg: dict, module: str, r: int) -> float:
    """PEFT's scale for ``module`` (alpha_pattern / rank_pattern / rsLoRA honoured)."""
    import re

    alpha = float(cfg.get("lora_alpha", r))
    for pattern, value in (cfg.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = float(value)
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _trained_arch(cfg: dict) -> str | None:
    """The GGUF architecture of the checkpoint the adapter names, when that checkpoint is a local folder."""
    from preflexor_local.convert._common import read_hf_config
    from preflexor_local.convert.hf_to_gguf import check_architecture

    path = Path(str(cfg.get("base_model_name_or_path") or "")).expanduser()
    if not (path / "config.json").is_file():
        return None
    try:
        return check_architecture(read_hf_config(path))[1]
    except InvalidModelError:
        return None


def _base_tensors(base: Path) -> tuple[str, dict[str, tuple[int, ...]], dict]:
    """(architecture, {name: ne}, metadata) of a base GGUF."""
    import gguf

    from preflexor_local.gguf_meta import read_gguf

    info = read_gguf(base)  # names a bad or truncated file first
    reader = gguf.GGUFReader(str(base))
    shapes = {t.name: tuple(int(x) for x in t.shape) for t in reader.tensors}
    return info.architecture or "", shapes, info.metadata


def convert_lora_to_gguf(
    adapter: str | Path, base: str | Path, out: str | Path, outtype: str = "f16", *, chat_template: str | None = None, force: bool = False, quiet: bool = False
) -> LoraGGUFResult:
    """Write ``adapter`` (PEFT or MLX LoRA) as a llama.cpp LoRA GGUF for the base GGUF ``base``."""
    import tempfile

    import gguf
    import numpy as np

    from preflexor_local.convert._common import atomic_file, check_output, info
    from preflexor_local.convert.hf_to_gguf import SUPPORTED, _encode, _normalise_name, _permute, _plan_type
    from preflexor_local.prompt import KNOWN_TEMPLATES

    t0 = time.perf_counter()
    if outtype not in OUT_TYPES:
        raise UsageError(f"unknown --outtype {outtype!r}", hint=f"choose one of: {', '.join(OUT_TYPES)}")
    adapter, base = Path(adapter).expanduser(), Path(base).expanduser()
    if not base.is_file():
        raise InvalidModelError(f"base {base} is not a GGUF file", hint="pass --base with the .gguf the adapter will be applied to")
    template_src = None
    if chat_template is not None:
        if chat_template not in KNOWN_TEMPLATES:
            raise UsageError(f"unknown chat template {chat_template!r}", hint=f"choose one of: {', '.join(KNOWN_TEMPLATES)}")
        template_src = KNOWN_TEMPLATES[chat_template][0]
    out = check_output(out, force)
    arch, base_shapes, meta = _base_tensors(base)
    families = dict(SUPPORTED.values())  # gguf arch -> family
    if arch not in families:
        _refuse(f"base architecture {arch!r}", "not one of the families the GGUF converter supports", f"supported: {', '.join(sorted(families))}")
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    n_blocks = int(meta.get(f"{arch}.block_count", 0))
    name_map = gguf.get_tensor_name_map(arch_enum, n_blocks)
    n_head = int(meta.get(f"{arch}.attention.head_count", 0) or 0)
    n_kv = int(meta.get(f"{arch}.attention.head_count_kv", n_head) or n_head)
    res = LoraGGUFResult(arch=arch, chat_template=chat_template)
    with tempfile.TemporaryDirectory() as tmp_root:
        cfg, tensors = _read_peft(_peft_dir(adapter, Path(tmp_root)))
        trained_on = _trained_arch(cfg)
        if trained_on is not None and trained_on != arch:
            _refuse(f"it was trained on a {trained_on} model", f"the base GGUF is {arch}", "pass the base this adapter was trained on")
        alpha = float(cfg.get("lora_alpha", cfg.get("r", 8)))
        modules = sorted({k[: k.index(".lora_A.")] for k in tensors if ".lora_A." in k})
        if not modules:
            _refuse("no lora_A tensors", "the adapter is empty or not LoRA")
        extra = sorted(k for k in tensors if ".lora_A." not in k and ".lora_B." not in k)
        if extra:
            _refuse(
                f"tensors that are not LoRA factors ({', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''})",
                "only lora_A/lora_B can be applied by llama.cpp",
            )
        planned = []
        for mod in modules:
            a = tensors[f"{mod}.lora_A.weight"].astype(np.float32)
            b = tensors[f"{mod}.lora_B.weight"].astype(np.float32)
            hf_name = _normalise_name(mod[len(_PEFT_PREFIX) :] if mod.startswith(_PEFT_PREFIX) else mod)
            found = name_map.get_type_and_name(f"{hf_name}.weight", try_suffixes=(".weight",)) if hf_name else None
            if found is None:
                _refuse(f"module {mod}", f"it maps to no {arch} tensor")
            dst = found[1]
            if found[0] in (gguf.MODEL_TENSOR.TOKEN_EMBD, gguf.MODEL_TENSOR.OUTPUT):
                _refuse(f"a LoRA on {dst}", "embedding/output LoRA is not supported here", "leave embeddings out of --target-modules")
            if dst not in base_shapes:
                _refuse(f"module {mod}", f"the base GGUF has no tensor {dst}", "pass the base this adapter was trained on")
            r = a.shape[0]
            want = base_shapes[dst]  # ne = [in, out]
            if b.shape[1] != r or (a.shape[1], b.shape[0]) != (want[0], want[1]):
                _refuse(
                    f"shapes of {mod}", f"A {a.shape} / B {b.shape} do not fit base {dst} with ne {list(want)}", "pass the base this adapter was trained on"
                )
            b = b * (_module_scale(cfg, mod, r) / (alpha / r))
            if families[arch] == "llama" and hf_name.endswith("self_attn.q_proj"):
                b = _permute(b, n_head)
            elif families[arch] == "llama" and hf_name.endswith("self_attn.k_proj"):
                b = _permute(b, n_kv)
            planned.append((f"{dst}.lora_a", a))
            planned.append((f"{dst}.lora_b", b))
            res.rank = max(res.rank, r)
        with atomic_file(out) as tmp:
            writer = gguf.GGUFWriter(str(tmp), arch)
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            writer.add_name(f"{meta.get('general.name', arch)} LoRA ({adapter.name})")
            if template_src is not None:
                writer.add_chat_template(template_src)
                writer.add_string("preflexor.chat_template", chat_template)
            for name, arr in planned:
                qtype = _plan_type(outtype, arr.shape, name)
                data = _encode(arr, qtype)
                quantized = qtype not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16)
                writer.add_tensor(name, data, raw_dtype=qtype if quantized else None)  # quantized: bytes, shape from their rows
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
    res.output, res.tensors, res.alpha = str(out), len(planned), alpha
    res.bytes, res.seconds = out.stat().st_size, round(time.perf_counter() - t0, 3)
    info(f"wrote {out} ({res.bytes / 2**20:.2f} MiB, {len(planned)} tensors, rank {res.rank}, alpha {alpha:g})", quiet)
    return res


def _command():
    import click

    @click.command("lora-gguf")
    @click.argument("adapter", type=click.Path(path_type=Path))
    @click.option("--base", required=True, type=click.Path(path_type=Path), help="The base model's GGUF (any quantization) the adapter applies to.")
    @click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="LoRA GGUF file to write.")
    @click.option(
        "--outtype", default="f16", show_default=True, type=click.Choice(OUT_TYPES), help="Type of the LoRA factors (q8_0 where rows allow, else f16)."
    )
    @click.option("--chat-template", help="Record the chat format the adapter was trained with (a known name, e.g. gemma).")
    @click.option("--force", is_flag=True, help="Replace the output file if it exists.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
    def lora_gguf_cmd(adapter, base, output, outtype, chat_template, force, as_json):
        """Write a PEFT or MLX LoRA ADAPTER as a llama.cpp LoRA GGUF (ask --adapter, llama-server --lora, Ollama ADAPTER)."""
        res = convert_lora_to_gguf(adapter, base, output, outtype, chat_template=chat_template, force=force, quiet=as_json)
        if as_json:
            click.echo(json.dumps(res.to_dict()))
        else:
            click.echo(
                f"{res.output}\t{res.arch}\trank {res.rank}\talpha {res.alpha:g}\t{res.tensors} tensors\t{res.bytes / 2**20:.2f} MiB\t{res.seconds:.1f} s"
            )

    return lora_gguf_cmd


command = _command()

if __name__ == "__main__":
    from preflexor_local.convert._common import run_script

    run_script(command)
