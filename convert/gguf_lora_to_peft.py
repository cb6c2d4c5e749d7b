"""llama.cpp LoRA GGUF -> PEFT LoRA folder, for a Hugging Face copy of its base: train on from a shipped adapter.

The math, the inverse of ``lora_gguf``. llama.cpp adds ``scale * B @ A`` to a
weight with ``scale = adapter.lora.alpha / r`` (``r = ne[0]`` of B; a missing or
zero alpha means scale 1); PEFT adds ``(lora_alpha / r) * B @ A``. So A and B are
written as the GGUF holds them, dequantised to float32 (numpy rows = ``ne[1]``),
with ``lora_alpha = alpha`` (or ``r`` where alpha is 0). For the Llama family
llama.cpp's ``q``/``k`` rows are permuted (see ``hf_to_gguf``): B's rows are
permuted back and A is left alone.

Names: each LoRA GGUF tensor ``<gguf>.lora_a`` becomes the PEFT module of the
base checkpoint weight that maps to ``<gguf>`` (``gguf.TensorNameMap``), read
from the checkpoint itself, so PEFT finds exactly the modules it loads.

Refused by name: a file that is not a LoRA adapter GGUF, an activated LoRA
(aLoRA), a LoRA on the embedding or output, a tensor the base checkpoint does
not have or with other shapes, and unequal ranks across modules where PEFT would
need a rank pattern (written as one: ``rank_pattern`` / ``alpha_pattern``).
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import _bootstrap  # noqa: F401  (run from a checkout)

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from preflexor_local.errors import InvalidModelError, ModelNotFoundError

_PEFT_PREFIX = "base_model.model."


@dataclass
class PeftResult:
    output: str = ""
    arch: str = ""
    modules: int = 0
    rank: int = 0
    alpha: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _unpermute(w, n_head: int):
    """The inverse of ``hf_to_gguf._permute`` on rows."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _checkpoint_weights(base: Path) -> dict[str, tuple[int, ...]]:
    """{weight name: shape} of a Hugging Face checkpoint folder (safetensors), read from the file headers."""
    from safetensors import safe_open

    files = sorted(base.glob("*.safetensors"))
    if not (base / "config.json").is_file() or not files:
        raise InvalidModelError(
            f"{base} is not a Hugging Face checkpoint folder with safetensors", hint="make one with `preflexor-local convert hf BASE.gguf -o DIR`"
        )
    shapes = {}
    for f in files:
        with safe_open(str(f), framework="numpy") as fh:
            for name in fh.keys():
                shapes[name] = tuple(fh.get_slice(name).get_shape())
    return shapes


def convert_gguf_lora_to_peft(adapter: str | Path, base: str | Path, out: str | Path, *, force: bool = False, quiet: bool = False) -> PeftResult:
    """Write the LoRA GGUF ``adapter`` as a PEFT adapter folder for the HF checkpoint ``base``."""
    import gguf
    import numpy as np
    from safetensors.numpy import save_file

    from preflexor_local.convert._common import check_output, info, read_hf_config
    from preflexor_local.convert.ggml_quants import decode
    from preflexor_local.convert.hf_to_gguf import SUPPORTED, _normalise_name, check_architecture
    from preflexor_local.gguf_meta import read_gguf

    t0 = time.perf_counter()
    adapter, base = Path(adapter).expanduser(), Path(base).expanduser()
    if not adapter.is_file():
        raise ModelNotFoundError(f"adapter not found: {adapter}", hint="pass a LoRA GGUF written by `convert lora-gguf` (or llama.cpp's converter)")
    meta = read_gguf(adapter)  # names a bad or truncated file first
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise InvalidModelError(f"{adapter} is not a LoRA adapter GGUF (general.type {meta.get('general.type')!r})")
    if "adapter.alora.invocation_tokens" in meta.metadata:
        raise InvalidModelError(f"cannot convert {adapter.name}: it is an activated LoRA (aLoRA), which PEFT's LoRA cannot express")
    cfg = read_hf_config(base)
    arch = check_architecture(cfg)[1]
    if meta.architecture != arch:
        raise InvalidModelError(
            f"adapter {adapter.name} is for {meta.architecture!r}, the checkpoint {base} is {arch!r}", hint="pass the base it was trained on"
        )
    out = check_output(out, force)
    arch_enum = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    text = cfg.get("text_config", cfg)  # a multimodal config keeps the language model's in text_config
    name_map = gguf.get_tensor_name_map(arch_enum, int(text.get("num_hidden_layers", 0)))
    shapes = _checkpoint_weights(base)
    to_hf = {}  # gguf weight name -> the checkpoint's module name
    for name in shapes:
        norm = _normalise_name(name)
        found = name_map.get_type_and_name(norm, try_suffixes=(".weight", ".bias")) if norm and name.endswith(".weight") else None
        if found is not None:
            to_hf[found[1]] = name[: -len(".weight")]
    n_head = int(text.get("num_attention_heads", 0) or 0)
    n_kv = int(text.get("num_key_value_heads", n_head) or n_head)
    family = dict(SUPPORTED.values())[arch]
    alpha = float(meta.get("adapter.lora.alpha", 0.0) or 0.0)
    reader = gguf.GGUFReader(str(adapter))
    tensors = {t.name: t for t in reader.tensors}
    weights, ranks = {}, {}
    for a_name in sorted(n for n in tensors if n.endswith(".lora_a")):
        dst = a_name[: -len(".lora_a")]
        b_t = tensors.get(dst + ".lora_b")
        if b_t is None:
            raise InvalidModelError(f"cannot convert {adapter.name}: {a_name} has no {dst}.lora_b")
        module = to_hf.get(dst)
        if module is None or dst.startswith(("token_embd", "output.")):
            raise InvalidModelError(f"cannot convert {adapter.name}: {dst} is no linear weight of {base}", hint="pass the base it was trained on")
        a = decode(tensors[a_name].data, tensors[a_name].tensor_type, a_name).reshape(int(tensors[a_name].shape[1]), int(tensors[a_name].shape[0]))
        b = decode(b_t.data, b_t.tensor_type, dst + ".lora_b").reshape(int(b_t.shape[1]), int(b_t.shape[0]))
        want = shapes[module + ".weight"]  # (out, in)
        if a.shape[1] != want[1] or b.shape[0] != want[0] or a.shape[0] != b.shape[1]:
            raise InvalidModelError(
                f"cannot convert {adapter.name}: {dst} has A {a.shape} and B {b.shape}, {module} is {want}", hint="pass the base it was trained on"
            )
        if family == "llama" and module.endswith("self_attn.q_proj"):
            b = _unpermute(b, n_head)
        elif family == "llama" and module.endswith("self_attn.k_proj"):
            b = _unpermute(b, n_kv)
        weights[f"{_PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a, dtype=np.float32)
        weights[f"{_PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b, dtype=np.float32)
        ranks[module] = a.shape[0]
    if not ranks:
        raise InvalidModelError(f"cannot convert {adapter.name}: it holds no LoRA tensors")
    rank = max(ranks.values(), key=list(ranks.values()).count)  # the most common rank; the rest go in the pattern
    pattern = {m: r for m, r in ranks.items() if r != rank}
    # llama.cpp's scale is alpha / r with r per tensor: a pattern keeps that ratio per module
    cfg_out = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base.resolve()),
        "r": rank,
        "lora_alpha": alpha or rank,
        "rank_pattern": pattern,
        "alpha_pattern": {m: alpha or r for m, r in pattern.items()},
        "target_modules": sorted(ranks),  # full names: short ones would wrap every block with a same-named layer
        "layers_to_transform": None,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }
    # written under a temporary name and renamed when complete: an interrupted run leaves no half folder
    part = out.with_name(f".{out.name}.part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    save_file(weights, str(part / "adapter_model.safetensors"))
    (part / "adapter_config.json").write_text(json.dumps(cfg_out, indent=2))
    if out.exists():  # --force
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(part, out)
    res = PeftResult(str(out), arch, len(ranks), rank, float(alpha or rank), round(time.perf_counter() - t0, 3))
    info(f"wrote {out} ({len(ranks)} modules, rank {rank}, alpha {res.alpha:g})", quiet)
    return res


def _command():
    import click

    @click.command("lora-peft")
    @click.argument("adapter", type=click.Path(path_type=Path))
    @click.option("--base", required=True, type=click.Path(path_type=Path), help="The Hugging Face checkpoint folder of the adapter's base (convert hf).")
    @click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="PEFT adapter folder to write.")
    @click.option("--force", is_flag=True, help="Replace the output if it exists.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
    def lora_peft_cmd(adapter, base, output, force, as_json):
        """Write a llama.cpp LoRA GGUF ADAPTER as a PEFT adapter folder (to merge it or train on from it)."""
        res = convert_gguf_lora_to_peft(adapter, base, output, force=force, quiet=as_json)
        click.echo(json.dumps(res.to_dict()) if as_json else f"{res.output}\t{res.arch}\trank {res.rank}\talpha {res.alpha:g}\t{res.modules} modules")

    return lora_peft_cmd


command = _command()

if __name__ == "__main__":
    from preflexor_local.convert._common import run_script

    run_script(command)
