"""Preference data: the JSONL format, loading with line-numbered errors, and rendering.

One row per line, a JSON object with

* ``prompt``: a string (the user's question) or a list of chat messages
  (``{"role": "system"|"user"|"assistant", "content": str}``) ending with a user turn;
* ``chosen`` and ``rejected``: a string (the assistant's reply) or a list with
  one assistant message;
* optional ``system`` (a string, used when ``prompt`` is a string);
* optional ``rejected_cut`` (``true`` when the rejected reply was stopped by a
  token limit): that reply is trained without an end-of-turn marker, since the
  model never ended it — scoring one would teach the preference loss that
  ending a turn is the rejected behaviour;
* any other fields (``meta`` …), which are kept but not trained on.

Rendering goes through ``preflexor_local.prompt.render_prompt`` — the same
function every backend uses at inference — so the trained prompt is the served
prompt: ``prompt_text = render(messages, add_generation_prompt=True)`` and the
completion is what rendering ``messages + [assistant reply]`` adds after it
(the reply plus the template's end-of-turn marker). A template whose full
rendering does not start with the prompt rendering falls back to
``reply + eos_token`` and says so once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PreflexorError
from ..format import ThinkingFormat
from ..prompt import ChatTemplate, Messages, render_prompt

REQUIRED = ("prompt", "chosen", "rejected")
ROLES = ("system", "user", "assistant")


class DataError(PreflexorError):
    """A preference dataset is missing, malformed or unusable."""


@dataclass
class PreferencePair:
    messages: Messages  # the prompt as chat messages, ending with a user turn
    chosen: str
    rejected: str
    meta: dict = field(default_factory=dict)
    line: int = 0  # 1-based line in the source file (0 = made in memory)
    # Assistant text already in the prompt, as the engine pre-fills it (e.g. the thinking
    # before a reflection): part of the prompt, never scored; both replies continue it.
    prefill: str = ""
    rejected_cut: bool = False  # the rejected reply hit a token limit: no end of turn after it

    def to_json(self) -> dict:
        return {
            "prompt": self.messages,
            "chosen": self.chosen,
            "rejected": self.rejected,
            **({"prefill": self.prefill} if self.prefill else {}),
            **({"rejected_cut": True} if self.rejected_cut else {}),
            **({"meta": self.meta} if self.meta else {}),
        }


def _where(source: str, line: int) -> str:
    return f"{source}:{line}" if line else source


def _messages(value, source: str, line: int, key: str) -> Messages:
    if not isinstance(value, list) or not value:
        raise DataError(
            f"{_where(source, line)}: '{key}' must be a string or a non-empty list of messages", hint='messages look like {"role": "user", "content": "..."}'
        )
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(
                f"{_where(source, line)}: '{key}'[{i}] is not a message with role in {ROLES} and string content",
                hint='messages look like {"role": "user", "content": "..."}',
            )
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _reply(value, source: str, line: int, key: str) -> str:
    if isinstance(value, str):
        return value
    msgs = _messages(value, source, line, key)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise DataError(f"{_where(source, line)}: '{key}' as a list must hold exactly one assistant message", hint=f"or give '{key}' as a plain string")
    return msgs[0]["content"]


def pair_from_obj(obj, source: str = "<data>", line: int = 0) -> PreferencePair:
    """Validate one row; every problem names the file and line."""
    if not isinstance(obj, dict):
        raise DataError(f"{_where(source, line)}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise DataError(
            f"{_where(source, line)}: missing column(s) {', '.join(missing)} (found: {', '.join(sorted(obj)) or 'none'})",
            hint="each line needs prompt, chosen and rejected (strings or chat-message lists)",
        )
    prompt = obj["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"{_where(source, line)}: 'prompt' is empty")
        messages = ([{"role": "system", "content": obj["system"]}] if obj.get("system") else []) + [{"role": "user", "content": prompt}]
    else:
        messages = _messages(prompt, source, line, "prompt")
        if messages[-1]["role"] != "user":
            raise DataError(f"{_where(source, line)}: the prompt's last message must be a user turn, got {messages[-1]['role']!r}")
    chosen = _reply(obj["chosen"], source, line, "chosen")
    rejected = _reply(obj["rejected"], source, line, "rejected")
    for key, text in (("chosen", chosen), ("rejected", rejected)):
        if not text.strip():
            raise DataError(f"{_where(source, line)}: '{key}' is empty")
    prefill = obj.get("prefill", "")
    if not isinstance(prefill, str):
        raise DataError(f"{_where(source, line)}: 'prefill' must be a string (assistant text the replies continue)")
    cut = obj.get("rejected_cut", False)
    if not isinstance(cut, bool):
        raise DataError(f"{_where(source, line)}: 'rejected_cut' must be true or false (whether a token limit stopped the rejected reply)")
    meta = obj["meta"] if isinstance(obj.get("meta"), dict) else {k: v for k, v in obj.items() if k not in (*REQUIRED, "system", "prefill", "rejected_cut")}
    return PreferencePair(messages, chosen, rejected, meta=meta, line=line, prefill=prefill, rejected_cut=cut)


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a line cut by a crash at the very end is skipped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset {path} does not exist", hint="pass a JSONL file of prompt/chosen/rejected rows, or --store to generate pairs")
    lines = path.read_text(encoding="utf-8").split("\n")
    last = max((i for i, s in enumerate(lines) if s.strip()), default=-1)
    for i, text in enumerate(lines):
        if not text.strip():
            continue
        try:
            yield i + 1, json.loads(text)
        except json.JSONDecodeError as err:
            if i == last and not text.endswith("}"):
                continue  # an append interrupted mid-line: the earlier rows stand
            raise DataError(f"{path}:{i + 1}: not valid JSON ({err.msg})", hint="each line must be one JSON object") from None


def load_pairs(path: str | Path, fmt: ThinkingFormat | None = None, require_thinking: bool = False, masked: bool = False) -> list[PreferencePair]:
    """Load and validate a JSONL preference file.

    ``require_thinking``: a chosen reply that opens a thinking section must close
    it (both PRefLexOR phases train on closed sections). Replies without thinking
    are the critic's and the integrator's roles (a review, a rewrite, a merged
    answer) and stand as they are. ``masked`` (the loss masks the thinking): at
    least one chosen reply must have a closed section, or the mask has nothing to
    act on — most likely the data uses other tags.
    """
    fmt = fmt or ThinkingFormat()
    pairs = [pair_from_obj(obj, str(path), n) for n, obj in iter_jsonl(path)]
    if not pairs:
        raise DataError(f"dataset {path} has no rows", hint="generate pairs with `preflexor-local data generate` first")
    if require_thinking:
        bad = [p.line for p in pairs if fmt.think_start in p.chosen and fmt.think_end not in p.chosen]
        if bad:
            shown = ", ".join(map(str, bad[:10])) + (" …" if len(bad) > 10 else "")
            raise DataError(
                f"{path}: {len(bad)} of {len(pairs)} chosen replies have no closing {fmt.think_end} tag (lines {shown})",
                hint=f"chosen replies must look like '{fmt.think_start}…{fmt.think_end} answer'; pass --tags if your data uses other tags",
            )
    if masked and not any(fmt.think_end in p.chosen for p in pairs):
        raise DataError(
            f"{path}: the thinking is masked from the loss, but none of its {len(pairs)} chosen replies has a closed {fmt.think_start}…{fmt.think_end} section",
            hint="pass --tags if your data uses other tags, or --no-mask-thinking for replies without thinking (a critic's or an integrator's)",
        )
    return pairs


# -- rendering ---------------------------------------------------------------

_warned: set[str] = set()


def render_pair(template: ChatTemplate, pair: PreferencePair) -> tuple[str, str, str]:
    """(prompt text, chosen completion text, rejected completion text) under ``template``.

    The prompt is what inference renders for the same messages and prefill (``render_prompt``);
    each completion is what the full conversation adds after it (the reply and end of turn). A
    rejected reply cut by a token limit is the prompt's continuation only: no end of turn.
    """
    prompt = render_prompt(template, pair.messages, pair.prefill, add_generation_prompt=True)
    return (
        prompt,
        render_completion(template, pair.messages, prompt, pair.chosen, pair.prefill),
        pair.rejected if pair.rejected_cut else render_completion(template, pair.messages, prompt, pair.rejected, pair.prefill),
    )


def render_completion(template: ChatTemplate, messages: Messages, prompt: str, reply: str, prefill: str = "") -> str:
    full = render_prompt(template, [*messages, {"role": "assistant", "content": prefill + reply}], "", add_generation_prompt=False)
    if full.startswith(prompt):
        return full[len(prompt) :]
    if template.name not in _warned:
        import sys

        _warned.add(template.name)
        print(
            f"warning: chat template {template.name!r} renders the prompt differently inside a full conversation; "
            "training on prompt + reply + end-of-sequence instead",
            file=sys.stderr,
        )
    return reply + (template.eos_token or "")
