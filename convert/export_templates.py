"""The chat format of an exported model, for runtimes that do not run our renderer.

Ollama takes a Go ``text/template`` (``TEMPLATE`` in a Modelfile); llama-server
takes a Jinja file (``--chat-template-file``); LM Studio reads the GGUF's own
``tokenizer.chat_template``. Each must render what ``prompt.render_prompt``
renders for the same conversation. The rule, per known format (``prompt.KNOWN_TEMPLATES``):

* An Ollama message ``{role, content, thinking}`` is our message with content
  ``fmt.thinking_block(thinking) + content`` (``thinking_block`` is what the
  engine pre-fills before an answer, tags on their own lines).
* A conversation that ends with a user (or system) turn gets the generation
  prompt; with ``think`` on, the opening thinking tag and a newline follow it,
  exactly the prefill ``ask`` opens each thinking section with. Ollama sees the
  prompt end with the opening tag and parses the reply as thinking until the
  closing tag (its ``thinking.InferTags`` reads both tags from the
  ``{{ .Thinking }}`` block of the template below).
* A conversation that ends with an assistant turn is continued (Ollama's
  pre-fill): that turn is rendered without its end-of-turn, which is our
  ``render_prompt`` of the turns before it with that turn as the prefill.
* No BOS text: llama.cpp adds the BOS token itself (``add_bos_token``); our
  renderer writes it as text and our tokenizer call skips the automatic one.
* Go templates cannot trim, so contents are used as given; our formats trim
  them (chatml excepted). Clients send trimmed turns; a turn with surrounding
  whitespace renders with it in Ollama.

Consecutive messages of one role are merged by Ollama (``"\\n\\n"`` between them)
before the template runs; ours are rendered as separate turns.
"""

from __future__ import annotations

from preflexor_local.errors import UsageError
from preflexor_local.format import ThinkingFormat
from preflexor_local.prompt import KNOWN_TEMPLATES

# Pieces shared by every format: the assistant body with its thinking, and the thinking prefill.
_ASSISTANT = "{{ if .Thinking }}{TS}\n{{ .Thinking }}\n{TE}\n{{ end }}{{ .Content }}"
_THINK = "{{ if $.Think }}{TS}\n{{ end }}"
_LAST = "{{- $last := eq (len (slice $.Messages $i)) 1 }}"
_GEN_AT_END = '{{- if and $last (ne .Role "assistant") }}{GEN}' + _THINK + "{{ end }}"

# Per format: the turns (inside ``range .Messages``) and the legacy single-turn form (``.System``/``.Prompt``).
_GO = {
    "gemma": (
        '{{- $system := "" }}',
        '{{- if eq .Role "system" }}{{ $system = printf "%s\\n\\n" .Content }}\n'
        '{{- else if eq .Role "user" }}<start_of_turn>user\n{{ $system }}{{ .Content }}<end_of_turn>\n{{ $system = "" }}\n'
        '{{- else if eq .Role "assistant" }}<start_of_turn>model\n' + _ASSISTANT + "{{ if not $last }}<end_of_turn>\n{{ end }}\n{{- end }}",
        "<start_of_turn>user\n{{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}<end_of_turn>\n",
        "<start_of_turn>model\n",
    ),
    "llama3": (
        "",
        '{{- if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>\n\n' + _ASSISTANT + "{{ if not $last }}<|eot_id|>{{ end }}\n"
        "{{- else }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>\n{{- end }}",
        "{{ if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
        "<|start_header_id|>user<|end_header_id|>\n\n{{ .Prompt }}<|eot_id|>",
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "chatml": (
        "",
        '{{- if eq .Role "assistant" }}<|im_start|>assistant\n' + _ASSISTANT + "{{ if not $last }}<|im_end|>\n{{ end }}\n"
        "{{- else }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}",
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n",
        "<|im_start|>assistant\n",
    ),
    "mistral": (
        '{{- $system := "" }}',
        '{{- if eq .Role "system" }}{{ $system = printf "%s\\n\\n" .Content }}\n'
        '{{- else if eq .Role "user" }}[INST] {{ $system }}{{ .Content }} [/INST]{{ $system = "" }}\n'
        '{{- else if eq .Role "assistant" }}' + _ASSISTANT + "{{ if not $last }}{EOS}{{ end }}\n{{- end }}",
        "[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }} [/INST]",
        "",
    ),
    "plain": (
        "",
        '{{- if eq .Role "system" }}{{ .Content }}\n\n'
        '{{ else if eq .Role "user" }}Question: {{ .Content }}\n'
        '{{ else if eq .Role "assistant" }}Answer: ' + _ASSISTANT + "{{ if not $last }}\n\n{{ end }}\n{{- end }}",
        "{{ if .System }}{{ .System }}\n\n{{ end }}Question: {{ .Prompt }}\n",
        "Answer: ",
    ),
}
assert set(_GO) == set(KNOWN_TEMPLATES), "every known format needs a Go template"


def known_name(source: str | None) -> str | None:
    """The KNOWN_TEMPLATES name whose Jinja source is ``source``, if any."""
    return next((name for name, (src, _) in KNOWN_TEMPLATES.items() if source is not None and src.strip() == source.strip()), None)


def resolve(override: str | None, recorded_name: str | None, source: str | None) -> tuple[str | None, str | None]:
    """(known name or None, Jinja source or None) of the exported format: ``--chat-template``, else what the
    file records (``preflexor.chat_template``, written by ``convert lora-gguf`` and by the merge), else a source
    that is one of ours."""
    if override:
        if override not in KNOWN_TEMPLATES:
            raise UsageError(f"unknown chat template {override!r}", hint=f"choose one of: {', '.join(KNOWN_TEMPLATES)}")
        return override, KNOWN_TEMPLATES[override][0]
    if recorded_name in KNOWN_TEMPLATES:
        return recorded_name, KNOWN_TEMPLATES[recorded_name][0]
    return known_name(source), source


def ollama_template(name: str, eos: str = "", fmt: ThinkingFormat | None = None) -> str:
    """The Go template (Ollama ``TEMPLATE``) that renders the known format ``name`` (see the module docstring)."""
    fmt = fmt or ThinkingFormat()
    if name not in _GO:
        raise UsageError(f"no Go template for the chat format {name!r}", hint=f"pass --chat-template with one of: {', '.join(_GO)}")
    head, turns, legacy, gen = _GO[name]
    text = (
        "{{- if .Messages }}" + head + "\n{{- range $i, $_ := .Messages }}\n" + _LAST + "\n" + turns + "\n" + _GEN_AT_END + "\n{{- end }}\n"
        "{{- else }}" + legacy + gen + _THINK + "{{ .Response }}{{ end }}"
    )
    for key, value in (("{GEN}", gen), ("{TS}", fmt.think_start), ("{TE}", fmt.think_end), ("{EOS}", eos)):
        text = text.replace(key, value)
    return text


def server_template(source: str, fmt: ThinkingFormat | None = None) -> str:
    """The Jinja file for llama-server: our format, plus the thinking prefill when ``enable_thinking`` is passed
    (``--chat-template-kwargs '{"enable_thinking": true}'``); without it the text is ``render_prompt``'s."""
    fmt = fmt or ThinkingFormat()
    opening = fmt.think_start.replace("'", "\\'")
    return (
        source.rstrip("\n") + "{% if add_generation_prompt and enable_thinking is defined and enable_thinking %}" + f"{{{{ '{opening}\\n' }}}}" + "{% endif %}"
    )


def stop_strings(name: str | None, eos: str = "") -> list[str]:
    """Where a reply ends in this format: its end-of-turn strings, then the model's end-of-sequence text."""
    stops = list(KNOWN_TEMPLATES[name][1]) if name in KNOWN_TEMPLATES else []
    if eos and eos not in stops:
        stops.append(eos)
    return stops


def to_our_messages(messages: list[dict], think: bool, fmt: ThinkingFormat | None = None) -> tuple[list[dict], str]:
    """The (messages, prefill) ``render_prompt`` takes for an Ollama conversation (the rule in the module docstring)."""
    fmt = fmt or ThinkingFormat()
    ours = [{"role": m["role"], "content": (fmt.thinking_block(m["thinking"]) if m.get("thinking") else "") + m.get("content", "")} for m in messages]
    if ours and ours[-1]["role"] == "assistant":
        return ours[:-1], ours[-1]["content"]
    return ours, fmt.think_start + "\n" if think else ""
