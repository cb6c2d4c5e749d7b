"""Merge a PEFT LoRA / DoRA adapter into its base model and save a plain HF checkpoint.

LoRA: ``W' = W + (alpha / r) · B A`` for every adapted linear layer (rsLoRA:
``alpha / sqrt(r)``). DoRA: ``W' = m · (W + s·B A) / ||W + s·B A||_col`` with the
learned magnitude ``m``. PEFT's ``merge_and_unload`` does the arithmetic; this
module makes the surrounding cases safe:

* adapters trained after new tokens were added (the thinking tags): the
  adapter's saved ``embed_tokens`` / ``lm_head`` (``modules_to_save``) or
  ``trainable_token_indices`` tell the vocabulary size; the base is resized to
  it before the adapter loads, and the tokenizer saved with the adapter (which
  has the new tokens) is the one written out;
* an adapter for another base (shapes or module names that do not fit) is one
  clear error, not a PEFT traceback;
* the chat template and generation config (end-of-turn eos) of the base are kept.
"""

from __future__ import annotations

if __name__ == "__main__" and not __package__:
    import _bootstrap  # noqa: F401  (run from a checkout)

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from preflexor_local.errors import InvalidModelError, ModelNotFoundError


@dataclass
class MergeResult:
    output: str
    kind: str  # "lora" or "dora"
    rank: int
    modules: list[str]
    vocab_rows: int
    resized: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def read_adapter(adapter: str | Path) -> tuple[dict, Path]:
    adapter = Path(adapter).expanduser()
    if not adapter.exists():
        raise ModelNotFoundError(f"adapter not found: {adapter}", hint="pass the folder with adapter_config.json and adapter_model.safetensors")
    cfg_file = adapter / "adapter_config.json"
    if not cfg_file.is_file():
        raise InvalidModelError(
            f"{adapter} is not a PEFT adapter: no adapter_config.json", hint="an MLX adapter? convert it first with `convert mlx-adapter-to-peft`"
        )
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    if cfg.get("peft_type") not in ("LORA",):
        raise InvalidModelError(f"adapter type {cfg.get('peft_type')!r} is not supported", hint="LoRA and DoRA adapters can be merged")
    weights = [p for p in (adapter / "adapter_model.safetensors", adapter / "adapter_model.bin") if p.is_file()]
    if not weights:
        raise InvalidModelError(f"{adapter} has adapter_config.json but no adapter_model.safetensors")
    return cfg, weights[0]


def _adapter_vocab_rows(weights: Path) -> int | None:
    """Rows of the embedding / lm_head saved in the adapter (resized vocabularies), if any."""
    if weights.suffix == ".safetensors":
        from preflexor_local.convert._common import check_safetensors

        check_safetensors([weights])
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as fh:
            shapes = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    else:
        import torch

        shapes = {k: tuple(v.shape) for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()}
    rows = [s[0] for k, s in shapes.items() if re.search(r"(embed_tokens|lm_head|wte|embed_out)(\.modules_to_save\.[^.]+|\.original_module)?\.weight$", k)]
    return max(rows) if rows else None


def merge_adapter(base: str | Path, adapter: str | Path, out: str | Path, *, force: bool = False, dtype: str = "auto", quiet: bool = False) -> MergeResult:
    """Merge ``adapter`` into ``base``; write a normal HF checkpoint to ``out`` (atomically)."""
    from preflexor_local.convert._common import atomic_dir, check_output, check_safetensors, info, read_hf_config, torch_dtype, weight_files

    t0 = time.perf_counter()
    base = Path(base).expanduser()
    read_hf_config(base)
    check_safetensors(weight_files(base))
    acfg, aweights = read_adapter(adapter)
    adapter = Path(adapter).expanduser()
    out = check_output(out, force)
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info(f"loading {base} + {adapter} ...", quiet)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype(dtype))
    tok_dir = adapter if (adapter / "tokenizer_config.json").is_file() else base
    tok = AutoTokenizer.from_pretrained(tok_dir)
    notes = [f"tokenizer taken from the {'adapter' if tok_dir == adapter else 'base'} folder"]
    rows = _adapter_vocab_rows(aweights)
    old_rows = model.get_input_embeddings().weight.shape[0]
    resized = False
    if rows is not None and rows != old_rows:
        model.resize_token_embeddings(rows, mean_resizing=False)
        resized = True
        notes.append(f"base embeddings resized {old_rows} -> {rows} to fit the adapter's saved embeddings")
    elif len(tok) > old_rows:
        raise InvalidModelError(
            f"the adapter's tokenizer has {len(tok)} tokens but the base only {old_rows} embedding rows, and the adapter saved no embeddings",
            hint="train with the tokens added to the base (convert add-tokens) or save embed_tokens/lm_head with the adapter",
        )
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as err:
        first = str(err).strip().splitlines()[0][:300]
        raise InvalidModelError(
            f"the adapter does not fit this base model: {first}",
            hint=f"merge it into the base it was trained on (adapter_config says {acfg.get('base_model_name_or_path')!r})",
        ) from None
    with torch.no_grad():
        merged = peft_model.merge_and_unload()
    if hasattr(merged, "peft_config"):
        del merged.peft_config
    kind = "dora" if acfg.get("use_dora") else "lora"
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    n_rows = merged.get_input_embeddings().weight.shape[0]
    info(f"wrote {out} ({kind}, r={acfg.get('r')})", quiet)
    targets = acfg.get("target_modules") or []
    targets = sorted(targets) if isinstance(targets, list) else [str(targets)]
    return MergeResult(str(out), kind, int(acfg.get("r") or 0), targets, n_rows, resized, time.perf_counter() - t0, notes)


def _command():
    import click

    @click.command("merge")
    @click.argument("base", type=click.Path(path_type=Path))
    @click.argument("adapter", type=click.Path(path_type=Path))
    @click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Folder for the merged checkpoint.")
    @click.option("--dtype", default="auto", show_default=True, help="Weights dtype: auto, float32, float16, bfloat16.")
    @click.option("--force", is_flag=True, help="Replace the output folder if it exists.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
    def merge_cmd(base, adapter, output, dtype, force, as_json):
        """Merge the PEFT LoRA/DoRA ADAPTER into BASE and save a normal HF checkpoint."""
        res = merge_adapter(base, adapter, output, force=force, dtype=dtype, quiet=as_json)
        if as_json:
            click.echo(json.dumps(res.to_dict()))
            return
        click.echo(f"{res.output}\t{res.kind} r={res.rank}\t{res.vocab_rows} rows\t{res.seconds:.1f} s")
        for n in res.notes:
            click.echo(f"note: {n}")

    return merge_cmd


command = _command()

if __name__ == "__main__":
    from preflexor_local.convert._common import run_script

    run_script(command)
