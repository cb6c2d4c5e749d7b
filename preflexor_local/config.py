"""Typed settings shared by the CLI, the Python API and the server.

Each field carries its help text, flag and allowed range in ``metadata``;
``cli_options`` turns a dataclass into Click options and ``Settings`` checks the
ranges when an instance is built, so the CLI, the server's request validation
and the Python API refuse the same values with the same words.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any


def opt(
    default: Any,
    help: str,
    *flags: str,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    choices: tuple[str, ...] | None = None,
    deprecated: tuple[str, ...] = (),
    **click_kw: Any,
) -> Any:
    """A dataclass field that knows its command-line flag(s) and its allowed values.

    ``ge``/``gt``/``le`` bound numbers (``None`` values are always allowed: they
    mean "the default"); ``choices`` lists the allowed strings; ``deprecated``
    lists old spellings of the flag, still accepted (hidden, with a warning).
    """
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le)) if v is not None}
    meta = {"help": help, "flags": flags, "click": click_kw, "bounds": bounds, "choices": choices, "deprecated": deprecated}
    return field(default=default, metadata=meta)


def _label(f: dataclasses.Field) -> str:
    flags = f.metadata.get("flags") or ()
    longs = [x.split("/")[0] for x in flags if x.startswith("--")]
    return longs[0] if longs else f.name


def _fmt(x: float) -> str:
    return f"{x:g}"


def check_field(f: dataclasses.Field, value: Any) -> None:
    """Raise ``UsageError`` (with ``param`` = the field name) when ``value`` is outside the field's declared range."""
    from .errors import UsageError

    if value is None:
        return
    meta = f.metadata
    choices = meta.get("choices")
    if choices and value not in choices:
        raise UsageError(f"{_label(f)} must be one of {', '.join(choices)}; got {value!r}", param=f.name)
    # NaN passes every comparison and inf passes gt=0: a float setting is finite, bounded or not.
    if isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{_label(f)} must be a finite number, got {value!r}", param=f.name)
    bounds = meta.get("bounds") or {}
    if not bounds:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{_label(f)} must be a number, got {value!r}", param=f.name)
    ge, gt, le = bounds.get("ge"), bounds.get("gt"), bounds.get("le")
    low = f"at least {_fmt(ge)}" if ge is not None else f"greater than {_fmt(gt)}" if gt is not None else None
    high = f"at most {_fmt(le)}" if le is not None else None
    want = " and ".join(x for x in (low, high) if x)
    if (ge is not None and value < ge) or (gt is not None and value <= gt) or (le is not None and value > le):
        raise UsageError(f"{_label(f)} must be {want}, got {value!r}", param=f.name)


class Settings:
    """Mixin for typed settings: every declared range is checked when an instance is built."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_field(f, getattr(self, f.name))


@dataclass
class Sampling(Settings):
    temperature: float = opt(0.1, "Sampling temperature; 0 is greedy.", "--temperature", "-t", ge=0, le=10)
    top_p: float = opt(0.9, "Nucleus sampling threshold.", "--top-p", gt=0, le=1)
    top_k: int = opt(50, "Sample from the k most likely tokens (0 = all).", "--top-k", ge=0)
    min_p: float = opt(0.0, "Drop tokens below this fraction of the top probability.", "--min-p", ge=0, le=1)
    repeat_penalty: float = opt(1.1, "Penalty for repeating recent tokens (1.0 = off).", "--repeat-penalty", gt=0, le=10)
    dry_multiplier: float = opt(0.8, "DRY: penalise tokens that extend a verbatim repeat of earlier output (0 = off).", "--dry-multiplier", ge=0, le=100)
    dry_base: float = opt(1.75, "DRY: the penalty grows as base ** (repeat length - allowed length).", "--dry-base", ge=1, le=10)
    dry_allowed_length: int = opt(2, "DRY: repeats this many tokens long go unpenalised.", "--dry-allowed-length", ge=1)
    max_tokens: int = opt(512, "Most tokens per generation (each answer, critique, rewrite).", "--max-tokens", ge=1)
    seed: int | None = opt(None, "Random seed for reproducible sampling.", "--seed", ge=0)
    stop_repeats: bool = opt(True, "Stop a generation that has started repeating itself verbatim (small models loop).", "--stop-repeats/--no-stop-repeats")


@dataclass
class LoadOptions(Settings):
    ctx: int | None = opt(None, "Context window in tokens (default: the model's, capped at 8192).", "--ctx", ge=64)
    threads: int | None = opt(None, "CPU threads for llama.cpp (default: usable cores minus one; oversubscribed llama.cpp threads stall).", "--threads", ge=1)
    gpu_layers: int = opt(-1, "Layers to offload to Metal/CUDA in llama.cpp (-1 = all, 0 = CPU only).", "--gpu-layers", ge=-1)
    chat_template: str | None = opt(None, "Chat template: auto, a known name (gemma, llama3, chatml, mistral, plain) or a .jinja file.", "--chat-template")
    device: str = opt("auto", "Device for transformers: auto (CUDA, then MPS, then CPU), cuda, mps or cpu.", "--device", choices=("auto", "cuda", "mps", "cpu"))
    dtype: str = opt(
        "auto", "Weights dtype for transformers: auto, float32, float16 or bfloat16.", "--dtype", choices=("auto", "float32", "float16", "bfloat16")
    )
    adapters: tuple[str, ...] = opt((), "LoRA GGUF to apply at load (llama.cpp), as FILE or FILE:SCALE; repeat for several.", "--adapter", multiple=True)
    backend: str | None = opt(None, "Force a backend by name instead of choosing from the model spec.", "--backend")
    api_key: str | None = opt(None, "API key for an OpenAI-compatible server (default: $OPENAI_API_KEY).", "--api-key")
    timeout: float = opt(600.0, "Seconds to wait for an OpenAI-compatible server.", "--timeout", gt=0)
    # Calls a llama.cpp model decodes together in one batch, from as many threads (``serve --parallel``).
    # The KV cache holds ``parallel`` windows of ``ctx`` tokens; 1 = calls run one at a time, no decode thread.
    parallel: int = 1


@dataclass
class Recursion(Settings):
    rounds: int = opt(1, "Most answers to produce; each after the critic improves the previous thinking.", "--recursive", "-r", ge=1, le=64)
    mode: str = opt("thinking", "thinking: a critic critiques the thinking. reflect: the model's own reflection is the feedback.", "--mode")
    integrate: bool = opt(True, "Merge all answers into one final answer (only with 2+ rounds).", "--integrate/--no-integrate")
    thinking_budget: int | None = opt(
        None, "Most tokens for a thinking or reflection section before it is closed for the model (default: --max-tokens).", "--thinking-budget", ge=1
    )
    early_stop: bool = opt(
        True,
        "Stop before --recursive rounds when the critic finds nothing to fix or two answers agree (--all-rounds: run every round).",
        "--early-stop/--all-rounds",
    )
    keyed: str | None = opt(
        None,
        "The answer is keyed (choice, numeric or exact): the final answer is selected from the rounds' stated answers.",
        "--keyed",
        choices=("choice", "numeric", "exact"),
    )
    guards: str = opt(
        "auto",
        "Small-model guards (heading stops, the tag-prefix stop, the rewrite frame, the critique's DRY source): auto = on for the embedded models.",
        "--guards",
        choices=("auto", "on", "off"),
    )
    system: str | None = opt(None, "System prompt for the reasoning model.", "--system")
    critic_system: str | None = opt(None, "System prompt for the critic (default: built in).", "--critic-system")


@dataclass
class Retrieval(Settings):
    """A RAG store for ask, serve and eval: cited context for the reasoner, evidence for the critic."""

    rag: str | None = opt(
        None,
        "A RAG store (from `index add`), or builtin:grounded: the reasoner gets cited context, the critic checks each thinking against passages"
        " (eval: a built-in set with a corpus uses it unless --rag none).",
        "--rag",
    )
    rag_k: int = opt(5, "Chunks retrieved for the reasoner's context with --rag.", "-k", "--rag-k", ge=1, le=50)
    evidence_k: int = opt(4, "Passages the critic checks each thinking against with --rag (retrieved for its claims).", "--evidence-k", ge=1, le=20)


def cli_options(cls: type, exclude: tuple[str, ...] = ()):
    """A decorator adding one Click option per field of dataclass ``cls``."""
    import click

    def decorate(fn):
        for f in reversed(dataclasses.fields(cls)):
            if f.name in exclude or "flags" not in f.metadata:
                continue
            kw = dict(f.metadata.get("click", {}))
            flags = f.metadata["flags"]
            if f.type in ("int", "int | None"):
                kw.setdefault("type", int)
            elif f.type in ("float", "float | None"):
                kw.setdefault("type", float)
            fn = click.option(*flags, f.name, default=f.default, show_default=f.default not in (None, ()), help=f.metadata["help"], **kw)(fn)
            for old in f.metadata.get("deprecated", ()):
                fn = click.option(old, f"{f.name}{_ALIAS}", default=None, hidden=True, **kw)(fn)
        return fn

    return decorate


_ALIAS = "__deprecated_flag"


def from_kwargs(cls: type, kwargs: dict) -> Any:
    """Build ``cls`` from the Click keyword arguments that belong to it (removing them); a deprecated spelling's value
    counts where it was given."""
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    for f in dataclasses.fields(cls):
        old = kwargs.pop(f.name + _ALIAS, None)
        if old is not None:
            import sys

            print(f"warning: {f.metadata['deprecated'][0]} is deprecated; use {_label(f)}", file=sys.stderr)
            values[f.name] = old
    return cls(**values)
