"""Folders that Ollama, llama-server and LM Studio load: the model (adapters merged by default) and its chat format.

* Ollama: ``model.gguf`` and a ``Modelfile`` (``FROM``, a Go ``TEMPLATE`` that renders our format with the
  thinking tags, ``PARAMETER stop`` / ``num_ctx`` / sampling from ``config.Sampling``, ``SYSTEM``, the Gemma
  notice as ``LICENSE``). ``--as-adapter``: ``base.gguf`` + ``adapter.gguf`` and an ``ADAPTER`` line instead;
  Ollama applies one GGUF adapter and a later release is reported to refuse ``ADAPTER``, so merged is the default.
* llama-server: ``model.gguf`` (or ``base.gguf`` + ``--lora`` adapters), ``chat-template.jinja`` and ``run.sh``.
* LM Studio: the merged GGUF and a note (it has no runtime LoRA; it reads the GGUF's own chat template).

The format written is the one ``ask`` uses on the same files: the exported model is loaded once through the
backend, which applies the one template rule (``prompt.choose_template``, an adapter's recorded format first),
so that load is also the check that llama.cpp accepts the files. A scale other than 1 on an adapter kept as an
adapter is folded into its ``adapter.lora.alpha`` (llama.cpp's scale is ``user_scale · alpha / r``), since
Ollama's ``ADAPTER`` takes no scale and llama-server's ``--lora-scaled`` syntax changed between releases.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from preflexor_local.errors import InvalidModelError, UsageError

GEMMA_NOTICE = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"


@dataclass
class TargetResult:
    target: str
    folder: str
    files: list[str] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)
    as_adapter: bool = False
    chat_template: str | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class _Files:
    model: Path  # model.gguf (merged) or base.gguf
    adapters: list[Path]
    template: object  # prompt.ChatTemplate, as `ask` would use it
    info: object  # gguf_meta.GGUFInfo of the model file
    labels: list[str]


def _place(src: Path, dst: Path) -> None:
    """``dst`` = ``src``: a hard link where the file system allows one (no second copy of a large base), else a copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _ask_view(model: Path, adapters: list[Path], chat_template: str | None):
    """The template and header ``ask`` gets for these files, from loading them once through the llama.cpp backend."""
    from preflexor_local.backends import load
    from preflexor_local.config import LoadOptions

    backend = load(str(model), LoadOptions(ctx=64, adapters=tuple(str(a) for a in adapters), chat_template=chat_template))
    try:
        return backend.template, backend.info
    finally:
        backend.close()


def _model_files(folder: Path, work: Path, model: str, adapters: tuple[str, ...], opts: dict, as_adapter: bool, quiet: bool, name: str) -> _Files:
    from preflexor_local.convert.export_gguf import export_gguf, parse_adapter_arg, resolve_inputs

    args = [parse_adapter_arg(a) for a in adapters]
    if not as_adapter:
        from preflexor_local.convert._common import info

        info(f"merging {', '.join(adapters) or 'the default adapters'} into {model} ({opts['outtype']}) ...", quiet)
        res = export_gguf(model, adapters, folder / name, opts["outtype"], merged_type=opts["merged_type"], chat_template=opts["chat_template"], quiet=True)
        template, info = _ask_view(folder / name, [], opts["chat_template"])
        return _Files(folder / name, [], template, info, res.adapters)
    from preflexor_local.gguf_meta import read_gguf

    base, loras = resolve_inputs(model, args, work, hf_type=opts["outtype"], quiet=quiet)
    _place(base, folder / "base.gguf")
    placed = []
    for i, lora in enumerate(loras):
        dst = folder / ("adapter.gguf" if i == 0 else f"adapter-{i + 1}.gguf")
        if lora.scale == 1.0:
            _place(lora.path, dst)
        else:
            from preflexor_local.convert.gguf_copy import read_layout, rewrite_gguf

            alpha = float(read_gguf(lora.path).get("adapter.lora.alpha", 0.0) or 0.0)
            rank = next(t.ne[0] for t in read_layout(lora.path).tensors if t.name.endswith(".lora_b"))
            folded = lora.scale * (alpha or rank)  # alpha 0 means s = user_scale, i.e. alpha = r
            rewrite_gguf(lora.path, dst, {"adapter.lora.alpha": float(folded)})
        placed.append(dst)
    template, info = _ask_view(folder / "base.gguf", placed, opts["chat_template"])
    return _Files(folder / "base.gguf", placed, template, info, [a.label for a in args] or [lo.label for lo in loras])


def _export(
    target: str, writer, model, adapters, out, *, as_adapter=False, outtype="same", merged_type="q8_0", chat_template=None, force=False, quiet=False, **kw
):
    import tempfile

    from preflexor_local.convert._common import atomic_dir, check_output, info
    from preflexor_local.convert.export_gguf import check_outtype
    from preflexor_local.convert.export_templates import resolve

    t0 = time.perf_counter()
    opts = {"outtype": check_outtype(outtype, merged_type), "merged_type": merged_type, "chat_template": chat_template}
    resolve(chat_template, None, None)  # an unknown --chat-template is refused before any work
    out = check_output(out, force)
    with atomic_dir(out) as folder, tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{out.name}.work.") as work:
        name = f"{out.name}.gguf" if target == "lmstudio" else "model.gguf"
        files = _model_files(folder, Path(work), str(model), adapters, opts, as_adapter, quiet, name)
        res = TargetResult(target, str(out), adapters=files.labels, as_adapter=as_adapter)
        writer(folder, files, res, **kw)
        res.files = sorted(p.name for p in folder.iterdir())
    res.seconds = round(time.perf_counter() - t0, 3)
    info(f"wrote {out}/ ({', '.join(res.files)})", quiet)
    return res


def _known(files: _Files) -> str:
    from preflexor_local.convert.export_templates import known_name
    from preflexor_local.prompt import KNOWN_TEMPLATES

    template = files.template
    name = template.name if template.name in KNOWN_TEMPLATES else known_name(template.source)
    if name is None:
        raise InvalidModelError(
            f"cannot write a Go template for this model's own chat template ({template.name})",
            hint="pass --chat-template with the format the model was trained with (gemma, llama3, chatml, mistral, plain)",
        )
    return name


def _num_ctx(files: _Files) -> int:
    from preflexor_local.backends.base import context_window

    return context_window(files.info.arch_key("context_length"))  # the window `ask` opens


def _quoted(value: str) -> str:
    if '"""' in value:
        raise UsageError('a Modelfile value may not contain """', hint="remove the triple quotes from the text")
    return f'"{value}"' if "\n" not in value and '"' not in value else f'"""{value}"""'


def _write_ollama(folder: Path, files: _Files, res: TargetResult, system: str | None = None) -> None:
    from preflexor_local.config import Sampling
    from preflexor_local.convert.export_templates import ollama_template, stop_strings

    name = _known(files)
    res.chat_template = name
    s = Sampling()
    lines = [
        f"# Ollama Modelfile written by `preflexor-local export ollama` ({', '.join(res.adapters) or 'no adapter'}).",
        '# ollama create NAME -f Modelfile && ollama run NAME --think      (API: "think": true opens the thinking section)',
        f"FROM ./{files.model.name}",
    ]
    if files.adapters:
        if len(files.adapters) > 1:
            raise UsageError("Ollama applies one ADAPTER per model", hint="merge them instead (leave out --as-adapter), or pass one --adapter")
        lines.append(f"ADAPTER ./{files.adapters[0].name}")
        res.notes.append("ADAPTER mode: Ollama runs GGUF adapters through llama.cpp; a later release is reported to refuse ADAPTER, merged is safer")
    lines.append(f'TEMPLATE """{ollama_template(name, files.template.eos_token)}"""')
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in stop_strings(name, files.template.eos_token)]
    lines += [f"PARAMETER num_ctx {_num_ctx(files)}", f"PARAMETER temperature {s.temperature:g}", f"PARAMETER top_p {s.top_p:g}", f"PARAMETER top_k {s.top_k}"]
    lines.append(f"PARAMETER repeat_penalty {s.repeat_penalty:g}")
    if system:
        lines.append(f"SYSTEM {_quoted(system)}")
    if _is_gemma(files.info):
        lines.append(f'LICENSE """{GEMMA_NOTICE}"""')
    (folder / "Modelfile").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _is_gemma(info) -> bool:
    return "gemma" in str(info.get("general.license") or "").lower() or str(info.architecture or "").startswith("gemma")


def _write_llama_server(folder: Path, files: _Files, res: TargetResult) -> None:
    import shlex

    from preflexor_local.config import Sampling
    from preflexor_local.convert.export_templates import known_name, server_template
    from preflexor_local.format import ThinkingFormat

    res.chat_template = known_name(files.template.source) or files.template.name
    (folder / "chat-template.jinja").write_text(server_template(files.template.source), encoding="utf-8")
    s = Sampling()
    loras = "".join(f' \\\n  --lora "$DIR/{a.name}"' for a in files.adapters)
    script = f"""#!/bin/sh
# llama-server launcher written by `preflexor-local export llama-server` ({", ".join(res.adapters) or "no adapter"}).
# Usage: ./run.sh [more llama-server flags, e.g. --port 8080 -ngl 99]; LLAMA_SERVER=/path/to/llama-server picks the binary.
# chat-template.jinja is the chat format `preflexor-local ask` uses; enable_thinking opens the thinking section
# as ask does, so a reply's content is the thinking, then {ThinkingFormat().think_end}, then the answer
# (llama-server's reasoning parsers do not know these tags: --reasoning-format none keeps them in content).
DIR=$(CDPATH= cd -- "$(dirname -- "$0")" && pwd)
exec "${{LLAMA_SERVER:-llama-server}}" -m "$DIR/{files.model.name}"{loras} \\
  --jinja --chat-template-file "$DIR/chat-template.jinja" \\
  --chat-template-kwargs {shlex.quote('{"enable_thinking": true}')} --reasoning-format none \\
  -c {_num_ctx(files)} --temp {s.temperature:g} --top-p {s.top_p:g} --top-k {s.top_k} --repeat-penalty {s.repeat_penalty:g} "$@"
"""
    path = folder / "run.sh"
    path.write_text(script, encoding="utf-8")
    path.chmod(0o755)


def _write_lmstudio(folder: Path, files: _Files, res: TargetResult) -> None:
    from preflexor_local.convert.export_templates import known_name

    res.chat_template = known_name(files.template.source) or files.template.name
    note = f"""# {files.model.name} for LM Studio

`{files.model.name}` is the base with {", ".join(res.adapters) or "no adapter"} merged: LM Studio has no runtime LoRA.

    lms import {files.model.name}

(or drop the file into LM Studio's My Models). LM Studio formats chats with the file's own chat template
(`tokenizer.chat_template`: {res.chat_template}), the one `preflexor-local ask` uses. The thinking tags are plain
text to LM Studio: a reply shows its thinking and the closing tag before the answer.
"""
    (folder / "README.md").write_text(note, encoding="utf-8")


def export_ollama(model, adapters=(), out=None, *, as_adapter=False, system=None, **opts) -> TargetResult:
    """A folder for ``ollama create NAME -f Modelfile``: the merged GGUF (or base + ``ADAPTER``) and the Modelfile."""
    return _export("ollama", _write_ollama, model, adapters, out, as_adapter=as_adapter, system=system, **opts)


def export_llama_server(model, adapters=(), out=None, *, as_adapter=False, **opts) -> TargetResult:
    """A folder with ``run.sh``: llama-server on the merged GGUF (or base + ``--lora``) with our chat template file."""
    return _export("llama-server", _write_llama_server, model, adapters, out, as_adapter=as_adapter, **opts)


def export_lmstudio(model, adapters=(), out=None, **opts) -> TargetResult:
    """A folder with the merged GGUF and a note for ``lms import``."""
    return _export("lmstudio", _write_lmstudio, model, adapters, out, **opts)
