"""Typed settings shared by the CLI, the Python API and (later) a server.

Each field carries its help text and flag in ``metadata``; ``cli_options``
turns a dataclass into Click options, so flags and API defaults cannot drift.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


def opt(default: Any, help: str, *flags: str, **click_kw: Any) -> Any:
    """A dataclass field that knows its command-line flag(s)."""
    return field(default=default, metadata={"help": help, "flags": flags, "click": click_kw})


@dataclass
class Sampling:
    temperature: float = opt(0.1, "Sampling temperature; 0 is greedy.", "--temperature", "-t")
    top_p: float = opt(0.9, "Nucleus sampling threshold.", "--top-p")
    top_k: int = opt(50, "Sample from the k most likely tokens (0 = all).", "--top-k")
    min_p: float = opt(0.0, "Drop tokens below this fraction of the top probability.", "--min-p")
    repeat_penalty: float = opt(1.1, "Penalty for repeating recent tokens (1.0 = off).", "--repeat-penalty")
    max_tokens: int = opt(512, "Most tokens per generation (each answer, critique, rewrite).", "--max-tokens")
    seed: int | None = opt(None, "Random seed for reproducible sampling.", "--seed")
    stop_repeats: bool = opt(True, "Stop a generation that has started repeating itself verbatim (small models loop).", "--stop-repeats/--no-stop-repeats")


@dataclass
class LoadOptions:
    ctx: int | None = opt(None, "Context window in tokens (default: the model's, capped at 8192).", "--ctx")
    threads: int | None = opt(None, "CPU threads for llama.cpp (default: usable cores minus one; oversubscribed llama.cpp threads stall).", "--threads")
    gpu_layers: int = opt(-1, "Layers to offload to Metal/CUDA in llama.cpp (-1 = all, 0 = CPU only).", "--gpu-layers")
    chat_template: str | None = opt(None, "Chat template: auto, a known name (gemma, llama3, chatml, mistral, plain) or a .jinja file.", "--chat-template")
    device: str = opt("auto", "Device for transformers: auto (CUDA, then MPS, then CPU), cuda, mps or cpu.", "--device")
    dtype: str = opt("auto", "Weights dtype for transformers: auto, float32, float16 or bfloat16.", "--dtype")
    backend: str | None = opt(None, "Force a backend by name instead of choosing from the model spec.", "--backend")
    api_key: str | None = opt(None, "API key for an OpenAI-compatible server (default: $OPENAI_API_KEY).", "--api-key")
    timeout: float = opt(600.0, "Seconds to wait for an OpenAI-compatible server.", "--timeout")


@dataclass
class Recursion:
    rounds: int = opt(1, "Answers to produce; each after the critic improves the previous thinking.", "--recursive", "-r")
    mode: str = opt("thinking", "thinking: a critic critiques the thinking. reflect: the model's own reflection is the feedback.", "--mode")
    integrate: bool = opt(True, "Merge all answers into one final answer (only with 2+ rounds).", "--integrate/--no-integrate")
    thinking_budget: int | None = opt(None, "Most tokens for a thinking or reflection section before it is closed for the model (default: --max-tokens).", "--thinking-budget")
    system: str | None = opt(None, "System prompt for the reasoning model.", "--system")
    critic_system: str | None = opt(None, "System prompt for the critic (default: built in).", "--critic-system")

    def __post_init__(self) -> None:
        from .errors import UsageError

        if self.rounds < 1:
            raise UsageError(f"--recursive must be at least 1, got {self.rounds}", hint="--recursive 1 answers once; N > 1 adds N-1 critique-and-improve rounds")
        if self.thinking_budget is not None and self.thinking_budget < 1:
            raise UsageError(f"--thinking-budget must be at least 1, got {self.thinking_budget}")


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
            fn = click.option(*flags, f.name, default=f.default, show_default=f.default is not None, help=f.metadata["help"], **kw)(fn)
        return fn

    return decorate


def from_kwargs(cls: type, kwargs: dict) -> Any:
    """Build ``cls`` from the Click keyword arguments that belong to it (removing them)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: kwargs.pop(k) for k in list(kwargs) if k in names})
