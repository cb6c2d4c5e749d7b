"""How a prompt is rendered from chat messages plus an assistant prefill.

One function, ``render_prompt``, used by every backend that takes raw text and
by the trainers, so training and inference see the same prompt. The prefill is
appended after the generation prompt: the model *continues* it, which is how a
thinking section is forced open or an improved one is pre-filled.

Templates come from the model (a tokenizer's or a GGUF's Jinja chat template),
else, for an instruction-tuned model, from ``KNOWN_TEMPLATES`` by architecture
or by a format token its vocabulary holds, else the plain completion format for
base models that were never taught a chat format. ``choose_template`` is that
rule; ``probe_template`` reads its inputs from a loaded model, the same way for
every local backend and the trainers.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass, field
from functools import lru_cache

from .errors import UsageError

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class ChatTemplate:
    name: str  # "model" for a model's own template, else a KNOWN_TEMPLATES key
    source: str
    bos_token: str = ""
    eos_token: str = ""
    # Strings that end an assistant turn for this format, beyond the model's end-of-generation tokens.
    stop: tuple[str, ...] = field(default_factory=tuple)

    def render(self, messages: Messages, prefill: str = "", add_generation_prompt: bool = True) -> str:
        return render_prompt(self, messages, prefill, add_generation_prompt)


def _raise(message: str) -> None:
    raise UsageError(f"chat template error: {message}")


@lru_cache(maxsize=32)
def _compile(source: str):
    from datetime import datetime

    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # The same environment Hugging Face templates are written for.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as err:
        raise UsageError(
            f"chat template does not parse: {err}", hint="pass --chat-template with a known name (gemma, llama3, chatml, mistral, plain) or a .jinja file"
        ) from None


def render_prompt(template: ChatTemplate, messages: Messages, prefill: str = "", add_generation_prompt: bool = True) -> str:
    """Render ``messages`` (never modified) and append ``prefill`` for the model to continue."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    text = _compile(template.source).render(
        messages=msgs,
        add_generation_prompt=add_generation_prompt,
        bos_token=template.bos_token,
        eos_token=template.eos_token,
    )
    return text + prefill


# Our own renderings of well-known formats, for models whose template got lost.
_GEMMA = """{{ bos_token }}{% set ns = namespace(system='') %}
{% for m in messages %}
{% if m.role == 'system' %}{% set ns.system = m.content | trim + '\n\n' %}
{% else %}<start_of_turn>{{ 'model' if m.role == 'assistant' else 'user' }}
{{ (ns.system if m.role == 'user' else '') + m.content | trim }}<end_of_turn>
{% if m.role == 'user' %}{% set ns.system = '' %}{% endif %}
{% endif %}
{% endfor %}
{% if add_generation_prompt %}<start_of_turn>model
{% endif %}"""

_LLAMA3 = """{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>

{{ m.content | trim }}<|eot_id|>{% endfor %}
{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>

{% endif %}"""

_CHATML = """{% for m in messages %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}
{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

_MISTRAL = """{{ bos_token }}{% set ns = namespace(system='') %}
{% for m in messages %}
{% if m.role == 'system' %}{% set ns.system = m.content | trim + '\n\n' %}
{% elif m.role == 'user' %}[INST] {{ ns.system + m.content | trim }} [/INST]{% set ns.system = '' %}
{% else %}{{ m.content | trim }}{{ eos_token }}{% endif %}
{% endfor %}"""

# Base models: a plain document the model can continue. No special tokens at all.
_PLAIN = """{% for m in messages %}
{% if m.role == 'system' %}{{ m.content | trim }}

{% elif m.role == 'user' %}Question: {{ m.content | trim }}
{% else %}Answer: {{ m.content | trim }}

{% endif %}
{% endfor %}
{% if add_generation_prompt %}Answer: {% endif %}"""

KNOWN_TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gemma": (_GEMMA, ("<end_of_turn>",)),
    "llama3": (_LLAMA3, ("<|eot_id|>",)),
    "chatml": (_CHATML, ("<|im_end|>",)),
    "mistral": (_MISTRAL, ()),
    "plain": (_PLAIN, ("\nQuestion:", "\nAnswer:")),
}

# Architecture (GGUF general.architecture or HF model_type) -> known template, for
# instruction-tuned models whose own template is missing.
ARCH_TEMPLATES = {
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3_text": "gemma",
    "qwen2": "chatml",
    "qwen3": "chatml",
    "qwen2moe": "chatml",
    "qwen3moe": "chatml",
    "mistral": "mistral",
    "mixtral": "mistral",
}

# Tokens that name the format of an instruction-tuned model with no template and an unknown architecture, in the
# order tried: a vocabulary that holds one as a single token was taught that format.
FORMAT_TOKENS = (("<|start_header_id|>", "llama3"), ("<|im_start|>", "chatml"))


def known_template(name: str, bos_token: str = "", eos_token: str = "") -> ChatTemplate:
    try:
        source, stop = KNOWN_TEMPLATES[name]
    except KeyError:
        raise UsageError(f"unknown chat template {name!r}", hint=f"use one of: {', '.join(KNOWN_TEMPLATES)}, or a path to a .jinja file") from None
    return ChatTemplate(name=name, source=source, bos_token=bos_token if name != "plain" else "", eos_token=eos_token, stop=stop)


def check_template_option(value: str | None) -> None:
    """Refuse a --chat-template that is neither a known name nor a file, before anything loads."""
    from pathlib import Path

    if value and value != "auto" and value not in KNOWN_TEMPLATES and not Path(value).is_file():
        raise UsageError(
            f"chat template {value!r} is neither a known name nor a file", hint=f"use one of: {', '.join(KNOWN_TEMPLATES)}, or a path to a .jinja file"
        )


def choose_template(
    override: str | None,
    own_source: str | None,
    arch: str | None,
    instruct: bool,
    bos_token: str = "",
    eos_token: str = "",
    vocab_has: Container[str] = frozenset(),
) -> ChatTemplate:
    """The template rule shared by all local backends (see module docstring).

    ``override`` is a known name or a path to a Jinja file. ``instruct`` says the
    model looks instruction-tuned (by name or metadata): a known architecture
    template is used for those only, since base models continue plain text better.
    """
    if override and override != "auto":
        if override in KNOWN_TEMPLATES:
            return known_template(override, bos_token, eos_token)
        from pathlib import Path

        check_template_option(override)
        path = Path(override)
        return ChatTemplate("file:" + path.name, path.read_text(encoding="utf-8"), bos_token, eos_token)
    if own_source:
        return ChatTemplate("model", own_source, bos_token, eos_token)
    if instruct:
        name = ARCH_TEMPLATES.get(arch or "") or next((known for token, known in FORMAT_TOKENS if token in vocab_has), None)
        if name:
            return known_template(name, bos_token, eos_token)
    return known_template("plain")


_INSTRUCT_WORDS = frozenset({"instruct", "chat", "it", "assistant", "sft", "dpo", "orpo", "rlhf", "preflexor"})


def looks_instruct(*names: str | None) -> bool:
    """Whether a model's name or fine-tune label says it was trained to chat (e.g. ``gemma-3-1b-it``)."""
    import re

    words = set(re.split(r"[^a-z0-9]+", " ".join(n.lower() for n in names if n)))
    return bool(words & _INSTRUCT_WORDS)


def probe_template(
    override: str | None,
    own_source: str | None,
    arch: str | None,
    names: tuple[str | None, ...],
    has_token: Callable[[str], bool],
    bos_token: str = "",
    eos_token: str = "",
    instruct: bool = False,
) -> ChatTemplate:
    """The template of a loaded model: the one probe the local backends and the trainers call.

    ``choose_template`` with what it needs read from the model: whether it looks instruction-tuned (any of
    ``names`` by ``looks_instruct``, or ``instruct``) and which ``FORMAT_TOKENS`` its vocabulary holds as single
    tokens (``has_token``; ``hf_has_token`` for a Hugging Face tokenizer).
    """
    return choose_template(
        override,
        own_source,
        arch,
        instruct=instruct or looks_instruct(*names),
        bos_token=bos_token,
        eos_token=eos_token,
        vocab_has=frozenset(token for token, _ in FORMAT_TOKENS if has_token(token)),
    )


def hf_has_token(tokenizer) -> Callable[[str], bool]:
    """``has_token`` for a Hugging Face tokenizer: the text encodes to exactly one id, as it must to render as the
    token the model was taught (a vocabulary entry the tokenizer never produces from text does not count)."""
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False)) == 1
