"""``preflexor-local convert``: HF to GGUF / MLX, GGUF to HF, LoRA merge, tags, verify.

Each subcommand lives with its converter in ``preflexor_local.convert`` (the
``convert/`` folder of a checkout) as a click command named ``command`` and is
imported only when it runs.
"""

from __future__ import annotations

import importlib

import click

from preflexor_local.errors import BackendUnavailableError

# subcommand -> (module, summary)
SUBCOMMANDS = {
    "gguf": ("preflexor_local.convert.hf_to_gguf", "HF checkpoint -> GGUF (f32/f16/bf16/q8_0, K-quants via llama.cpp)."),
    "mlx": ("preflexor_local.convert.hf_to_mlx", "HF checkpoint -> MLX folder (optionally quantised)."),
    "merge": ("preflexor_local.convert.merge", "Merge a PEFT LoRA/DoRA adapter into its base -> HF checkpoint."),
    "hf": ("preflexor_local.convert.gguf_to_hf", "GGUF -> trainable HF checkpoint (dequantised)."),
    "verify": ("preflexor_local.convert.verify", "Prove HF, GGUF and MLX copies agree (tags, template, tokens, logits)."),
    "add-tokens": ("preflexor_local.convert.tokens", "Add the thinking/reflection tags as special tokens."),
    "mlx-adapter-to-peft": ("preflexor_local.convert.mlx_adapter", "MLX LoRA adapter -> PEFT adapter."),
    "lora-gguf": ("preflexor_local.convert.lora_gguf", "PEFT/MLX LoRA adapter -> llama.cpp LoRA GGUF (applied at load, quantized bases too)."),
    "lora-peft": ("preflexor_local.convert.gguf_lora_to_peft", "llama.cpp LoRA GGUF -> PEFT adapter (merge it, or train on from it)."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module = SUBCOMMANDS[name][0]
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name and module.startswith(err.name):
                raise BackendUnavailableError(
                    f"`convert {name}` is not available in this installation (module {module} is missing)",
                    hint="update preflexor-local; this converter ships with a newer version",
                ) from None
            raise BackendUnavailableError(
                f"`convert {name}` needs the Python package {err.name!r}, which is not installed",
                hint="pip install 'preflexor-local[convert]' (and [mlx] / [llama] for those formats)",
            ) from None
        return mod.command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(n, s) for n, (_, s) in SUBCOMMANDS.items()])


@click.group("convert", cls=LazyGroup)
def convert() -> None:
    """Convert checkpoints: HF to GGUF / MLX, GGUF to HF, LoRA merge, tags, verify.

    \b
    preflexor-local convert gguf ./my-model --outtype f16 -o my-model-f16.gguf
    preflexor-local convert gguf ./my-model --outtype q4_k_m
    preflexor-local convert mlx ./my-model -q --q-bits 4 -o my-model-mlx
    preflexor-local convert merge ./base ./lora-adapter -o ./merged
    preflexor-local convert hf ./model.gguf -o ./hf-dir
    preflexor-local convert add-tokens ./base -o ./base-tags
    preflexor-local convert verify ./my-model my-model-f16.gguf my-model-mlx
    preflexor-local convert lora-gguf ./run/adapter --base base.gguf -o adapter.gguf
    """
