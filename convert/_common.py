"""Shared plumbing for the converters: input checks, atomic outputs, progress.

Every converter writes its result under a temporary name next to the target and
renames it into place only when it is complete, so a crash or Ctrl-C never
leaves a half-written file or folder under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from preflexor_local.atomic import atomic_dir, atomic_file  # noqa: F401  (the converters import them from here)
from preflexor_local.errors import InvalidModelError, ModelNotFoundError, UsageError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # converters never reach a model hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin", "model*.bin")


def read_hf_config(path: str | Path) -> dict:
    """``config.json`` of a Hugging Face checkpoint directory, or a one-line error."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"checkpoint not found: {path}", hint="pass a Hugging Face checkpoint directory (with config.json)")
    if path.is_file():
        raise InvalidModelError(
            f"{path} is a file, not a Hugging Face checkpoint directory", hint="pass the folder that holds config.json and the *.safetensors weights"
        )
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InvalidModelError(
            f"{path} is not a Hugging Face checkpoint: no config.json", hint="pass the folder that holds config.json, the weights and the tokenizer files"
        )
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InvalidModelError(f"{cfg_file} is not valid JSON: {err}") from None
    if not isinstance(cfg, dict):
        raise InvalidModelError(f"{cfg_file} is not a JSON object")
    return cfg


def weight_files(path: Path) -> list[Path]:
    files = sorted(p for p in path.glob("*.safetensors") if not p.name.startswith("."))
    if not files:
        files = sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise InvalidModelError(
            f"{path} has a config.json but no weights (*.safetensors or pytorch_model*.bin)", hint="copy the model's weight files into the folder"
        )
    return files


def check_safetensors(files: list[Path]) -> None:
    """Catch truncated or corrupt safetensors files before any heavy work."""
    for f in files:
        if f.suffix != ".safetensors":
            continue
        size = f.stat().st_size
        try:
            with open(f, "rb") as fh:
                head = fh.read(8)
                if len(head) < 8:
                    raise ValueError("shorter than its 8-byte header length")
                n = int.from_bytes(head, "little")
                if n <= 0 or 8 + n > size:
                    raise ValueError(f"header says {n} bytes but the file has {size}")
                header = json.loads(fh.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
            if 8 + n + end > size:
                raise ValueError(f"tensor data needs {8 + n + end} bytes but the file has {size}")
        except (ValueError, KeyError, TypeError) as err:
            raise InvalidModelError(f"{f} is truncated or corrupt: {err}", hint="copy or download the file again; its size does not match its header") from None


def check_output(out: str | Path, force: bool) -> Path:
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise UsageError(f"output {out} already exists", hint="choose another path with -o, or pass --force to replace it")
    if not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    return out


def info(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def progress(total: int, desc: str, quiet: bool = False, unit: str = "tensor"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr, leave=False, dynamic_ncols=True)


def torch_dtype(name: str):
    import torch

    table = {
        "auto": "auto",
        "float32": torch.float32,
        "f32": torch.float32,
        "float16": torch.float16,
        "f16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if name not in table:
        raise UsageError(f"unknown dtype {name!r}", hint="choose auto, float32, float16 or bfloat16")
    return table[name]


def run_script(command, argv: list[str] | None = None) -> None:
    """Run a click command as a script, with the CLI's one-line error reporting."""
    from preflexor_local.commands import run

    run(command, argv)


def read_template_arg(value: str | None) -> str | None:
    """``--chat-template``: Jinja text (has ``{{`` or ``{%``) or the path of a template file that must exist."""
    if value is None:
        return None
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise UsageError(f"chat template file not found: {value}", hint="pass an existing .jinja file, or the template text itself")
    return path.read_text(encoding="utf-8")


@contextlib.contextmanager
def capture_native_stderr() -> Iterator[list[str]]:
    """Collect what native code (llama.cpp) writes to file descriptor 2; yields a list filled on exit."""
    import tempfile

    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())
