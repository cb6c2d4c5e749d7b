"""MLX LoRA/DoRA adapter -> PEFT adapter (``convert mlx-adapter-to-peft``), exact.

The math, per adapted linear layer ``W`` of shape ``[out, in]``:

* mlx-lm ``LoRALinear``: ``y = W x + s · (x @ a) @ b`` with ``a = lora_a`` ``[in, r]``,
  ``b = lora_b`` ``[r, out]`` and ``s = lora_parameters.scale``.
* PEFT LoRA: ``y = W x + (alpha / r) · B (A x)`` with ``A = lora_A.weight`` ``[r, in]``,
  ``B = lora_B.weight`` ``[out, r]``.
* So ``A = aᵀ``, ``B = bᵀ`` (both transposed, values untouched) and
  ``lora_alpha = s · r`` (written as a float when ``s · r`` is not whole;
  ``use_rslora`` stays off). The merged delta ``(alpha/r)·B A = s·bᵀaᵀ`` is
  exactly mlx-lm's ``fuse``.
* DoRA (mlx-lm ``DoRALinear``): ``y = m / ‖W + s·bᵀaᵀ‖_row · (W x + s·(x a) b) (+ bias)``.
  PEFT DoRA computes the same with ``lora_magnitude_vector = m`` ``[out]`` (row
  norms over the input axis), so ``m`` is copied as is and ``use_dora = True``.
* Token rows (our ``token_rows.safetensors``: full replacement rows for a few
  token ids in the embedding and an untied ``lm_head``) become PEFT trainable
  tokens: ``trainable_token_indices = {"embed_tokens": ids, "lm_head": ids}``
  and ``<module>.token_adapter.trainable_tokens_delta`` = the rows (PEFT stores
  the full rows too, despite the name).

Module names are mlx-lm's, which follow the Hugging Face names for the
architectures mlx-lm converts (``model.layers.N.self_attn.q_proj`` …); with
``base_model`` given, every target is checked against the HF checkpoint's
weight names and shapes before anything is written.

Refused, by name: full fine-tunes (``fine_tune_type: full``: not an adapter),
LoRA on mixture-of-experts ``SwitchLinear`` layers (3-D ``lora_a``), LoRA/DoRA
on embeddings (``LoRAEmbedding``/``DoRAEmbedding``), and any tensor or config
key this converter does not know (never dropped silently).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import click

from preflexor_local.errors import InvalidModelError, UsageError

from ._common import atomic_dir, check_output, info

KNOWN_CONFIG_KEYS = {
    "model",
    "fine_tune_type",
    "num_layers",
    "lora_parameters",
    "preflexor",
    # mlx_lm.lora writes its whole training config next to the adapter; these do not change the adapter's math.
    "adapter_path",
    "batch_size",
    "config",
    "data",
    "fine_tune_type",
    "grad_checkpoint",
    "grad_accumulation_steps",
    "hf_dataset",
    "iters",
    "learning_rate",
    "lr_schedule",
    "mask_prompt",
    "max_seq_length",
    "optimizer",
    "optimizer_config",
    "project_name",
    "report_to",
    "resume_adapter_file",
    "save_every",
    "seed",
    "steps_per_eval",
    "steps_per_report",
    "test",
    "test_batches",
    "train",
    "trust_remote_code",
    "val_batches",
    "wandb",
    "clear_cache_threshold",
}
KNOWN_LORA_KEYS = {"rank", "scale", "dropout", "keys"}


@dataclass
class MlxToPeftConfig:
    adapter: str | Path  # MLX adapter directory (adapter_config.json + adapters.safetensors)
    output: str | Path
    base_model: str | Path | None = None  # the HF checkpoint the PEFT adapter is for (checked when given)
    force: bool = False
    quiet: bool = False


def _refuse(what: str, why: str, hint: str | None = None):
    raise InvalidModelError(f"cannot convert this MLX adapter to PEFT: {what} ({why})", hint=hint)


def _safetensors_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for k, v in header.items():
            if k != "__metadata__":
                shapes[k] = tuple(v["shape"])
    return shapes


def convert_mlx_adapter_to_peft(cfg: MlxToPeftConfig) -> Path:
    """Write a PEFT adapter directory equivalent to the MLX adapter; returns its path."""
    import torch
    from safetensors.torch import load_file, save_file

    src = Path(cfg.adapter).expanduser()
    if not (src / "adapter_config.json").is_file() or not (src / "adapters.safetensors").is_file():
        raise InvalidModelError(
            f"{src} is not an MLX adapter directory (needs adapter_config.json and adapters.safetensors)",
            hint="pass the folder written by `train --engine mlx` or mlx_lm.lora",
        )
    try:
        mcfg = json.loads((src / "adapter_config.json").read_text(encoding="utf-8"))
    except ValueError as err:
        raise InvalidModelError(f"{src / 'adapter_config.json'} is not valid JSON: {err}") from None
    unknown = sorted(set(mcfg) - KNOWN_CONFIG_KEYS)
    if unknown:
        _refuse(f"unknown adapter_config keys {', '.join(unknown)}", "they may change the adapter's meaning")
    kind = mcfg.get("fine_tune_type", "lora")
    if kind == "full":
        _refuse("fine_tune_type 'full'", "a full fine-tune is a model, not an adapter", "fuse it with mlx_lm.fuse and convert the model instead")
    if kind not in ("lora", "dora"):
        _refuse(f"fine_tune_type {kind!r}", "only lora and dora are defined for PEFT here")
    lp = mcfg.get("lora_parameters") or {}
    extra = sorted(set(lp) - KNOWN_LORA_KEYS)
    if extra:
        _refuse(f"unknown lora_parameters {', '.join(extra)}", "they may change the adapter's math")
    if "rank" not in lp or "scale" not in lp:
        _refuse("lora_parameters without rank and scale", "the scale cannot be derived")
    rank, scale = int(lp["rank"]), float(lp["scale"])

    weights = load_file(str(src / "adapters.safetensors"))
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in weights.items():
        mod, _, leaf = key.rpartition(".")
        if leaf not in ("lora_a", "lora_b", "m"):
            _refuse(f"tensor {key!r}", "not a LoRA/DoRA tensor (lora_a, lora_b, m)")
        modules.setdefault(mod, {})[leaf] = t
    if not modules:
        _refuse("an empty adapters.safetensors", "there is nothing to convert")
    out_tensors: dict[str, torch.Tensor] = {}
    targets = []
    for mod, parts in sorted(modules.items()):
        a, b = parts.get("lora_a"), parts.get("lora_b")
        if a is None or b is None:
            _refuse(f"module {mod}", "it has only one of lora_a / lora_b")
        if a.dim() == 3 or b.dim() == 3:
            _refuse(f"LoRA on mixture-of-experts layer {mod} (SwitchLinear)", "PEFT has no equivalent for per-expert stacked LoRA")
        leaf = mod.rsplit(".", 1)[-1]
        if "embed" in leaf or leaf == "wte":
            _refuse(f"LoRA/DoRA on the embedding {mod} (LoRAEmbedding)", "not supported by this converter", "train with the default keys (linear layers only)")
        if a.shape[1] != rank or b.shape[0] != rank:
            _refuse(f"module {mod}", f"its tensors have rank {a.shape[1]}/{b.shape[0]} but the config says {rank}")
        if ("m" in parts) != (kind == "dora"):
            _refuse(f"module {mod}", "its magnitude vector 'm' does not match fine_tune_type " + repr(kind))
        name = f"base_model.model.{mod}"
        out_tensors[f"{name}.lora_A.weight"] = a.T.contiguous()
        out_tensors[f"{name}.lora_B.weight"] = b.T.contiguous()
        if kind == "dora":
            out_tensors[f"{name}.lora_magnitude_vector"] = parts["m"].contiguous()
        targets.append((mod, (b.shape[1], a.shape[0])))

    trainable_tokens = None
    rows_file = src / "token_rows.safetensors"
    if rows_file.is_file():
        ids = ((mcfg.get("preflexor") or {}).get("token_rows") or {}).get("ids")
        if not ids:
            _refuse("token_rows.safetensors without preflexor.token_rows.ids", "the rows' token ids are unknown")
        trainable_tokens = {}
        for key, t in load_file(str(rows_file)).items():
            mod, _, leaf = key.rpartition(".")
            if leaf != "rows" or t.shape[0] != len(ids):
                _refuse(f"token-row tensor {key!r}", f"expected '<module>.rows' with {len(ids)} rows")
            trainable_tokens[mod.rsplit(".", 1)[-1]] = list(ids)
            out_tensors[f"base_model.model.{mod}.token_adapter.trainable_tokens_delta"] = t.contiguous()

    base = cfg.base_model or mcfg.get("model")
    if cfg.base_model is not None:
        base_path = Path(cfg.base_model).expanduser()
        files = sorted(base_path.glob("*.safetensors"))
        if not files:
            raise InvalidModelError(
                f"{base_path} has no *.safetensors weights to check the adapter against", hint="pass the Hugging Face checkpoint the adapter belongs to"
            )
        shapes = _safetensors_shapes(files)
        for mod, shape in targets:
            got = shapes.get(f"{mod}.weight")
            if got is None:
                _refuse(f"module {mod}", f"{base_path} has no weight {mod}.weight (different architecture naming?)")
            if got != shape:
                _refuse(f"module {mod}", f"adapter expects a [{shape[0]}, {shape[1]}] weight, {base_path} has {list(got)}")

    out = check_output(cfg.output, cfg.force)
    alpha = scale * rank
    peft_cfg = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base) if base else None,
        "r": rank,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "lora_dropout": float(lp.get("dropout", 0.0)),
        "target_modules": sorted(m for m, _ in targets),
        "use_dora": kind == "dora",
        "use_rslora": False,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
        "trainable_token_indices": trainable_tokens,
    }
    with atomic_dir(out) as tmp:
        save_file(out_tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(peft_cfg, indent=2), encoding="utf-8")
        for name in ("chat_template.jinja",):
            if (src / name).is_file():
                (tmp / name).write_bytes((src / name).read_bytes())
    info(
        f"wrote PEFT adapter {out} ({len(targets)} {kind} modules, r={rank}, alpha={peft_cfg['lora_alpha']}"
        + (f", {len(trainable_tokens)} token-row modules" if trainable_tokens else "")
        + ")",
        cfg.quiet,
    )
    return out


@click.command("mlx-adapter-to-peft")
@click.argument("adapter", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(path_type=Path), help="PEFT adapter directory to write.")
@click.option(
    "--base-model",
    type=click.Path(path_type=Path),
    default=None,
    help="The Hugging Face checkpoint the adapter is for: recorded in the PEFT config and checked (names, shapes).",
)
@click.option("--force", is_flag=True, help="Replace the output if it exists.")
@click.option("--quiet", "-q", is_flag=True, help="No progress messages.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(adapter: Path, output: Path, base_model: Path | None, force: bool, quiet: bool, as_json: bool) -> None:
    """Convert an MLX LoRA/DoRA adapter to the PEFT format (exact transpose; scale becomes lora_alpha)."""
    if adapter.resolve() == output.resolve():
        raise UsageError("the output must differ from the input adapter directory")
    out = convert_mlx_adapter_to_peft(MlxToPeftConfig(adapter, output, base_model, force, quiet or as_json))
    if as_json:
        click.echo(json.dumps({"output": str(out), "config": json.loads((out / "adapter_config.json").read_text())}))
