"""Request bodies -> the engine's typed settings.

A request overrides the server's defaults field by field; ranges are checked by
the settings themselves (``Sampling``, ``Recursion``), so the server refuses
exactly what the CLI refuses, with the same words, as a 400 naming the request
field. Unknown standard fields are ignored, as OpenAI clients send many
(``user``, ``logprobs``, ...); unknown keys inside our own ``preflexor`` object
are errors.

Mapping:

* ``temperature``, ``top_p``, ``seed``, ``max_tokens`` / ``max_completion_tokens``
  (per model call: each thinking, answer, critique, ...), and llama.cpp's
  ``top_k``, ``min_p``, ``repeat_penalty``, ``dry_multiplier``, ``dry_base``,
  ``dry_allowed_length`` -> ``Sampling``;
* ``preflexor: {rounds, mode, integrate, thinking_budget, transcript}`` -> ``Recursion``;
* ``reasoning_effort`` (or ``reasoning.effort``, Ollama's ``think``, ...): none -> 1 round
  with the reasoning hidden, minimal/low/medium/high -> the server's ``--effort-*`` rounds;
  ``preflexor.rounds`` wins over it. The budget names clients send
  (``thinking_budget_tokens``, ``reasoning_budget``, ``chat_template_kwargs.thinking_budget``,
  ``think: N``) -> ``thinking_budget``; ``preflexor.thinking_budget`` wins. budgets.py states the rules;
* ``messages``: system/developer messages -> the system prompt (replacing
  ``--system``), the last user message -> the question, earlier turns -> a short
  "earlier in this conversation" preamble (the engine answers one question);
* ``stop``: cuts the final answer (the engine's own calls keep their stops).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import Recursion, Sampling
from ..errors import UsageError
from . import budgets
from .errors import APIError
from .settings import ServeSettings

_EXTENSION_KEYS = ("rounds", "mode", "integrate", "thinking_budget", "transcript")


@dataclass(frozen=True)
class Job:
    """What one request asks the engine to do, and how the answer is to be shaped."""

    question: str
    sampling: Sampling
    recursion: Recursion
    stream: bool = False
    include_usage: bool = False
    show_reasoning: bool = True
    transcript: bool = False
    stop: tuple[str, ...] = ()
    system: str | None = None  # for the context-window pre-check


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def parse_chat(body: Any, settings: ServeSettings, sampling: Sampling, recursion: Recursion) -> Job:
    body = _object(body)
    system, question = _conversation(body.get("messages"))
    return _job(body, question, system, settings, sampling, recursion)


def parse_completion(body: Any, settings: ServeSettings, sampling: Sampling, recursion: Recursion) -> Job:
    body = _object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad("prompt must be a non-empty string", "prompt")
    return _job(body, prompt, None, settings, sampling, recursion)


# -- pieces -------------------------------------------------------------------
def _object(body: Any) -> dict:
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", code="invalid_json")
    return body


def _job(body: dict, question: str, system: str | None, settings: ServeSettings, sampling: Sampling, recursion: Recursion) -> Job:
    model = body.get("model")
    if model is not None and model != settings.model_id:
        raise bad(f"unknown model {model!r}: this server serves {settings.model_id!r}", "model", "model_not_found")
    n = body.get("n")
    if n is not None and n != 1:
        raise bad("only n=1 is supported", "n")
    stream = _typed(body, "stream", bool, False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad("stream_options must be an object", "stream_options")
    include_usage = _typed(options or {}, "include_usage", bool, False, "stream_options.include_usage")
    ext = body.get("preflexor")
    if ext is None:
        ext = {}
    if not isinstance(ext, dict):
        raise bad('preflexor must be an object like {"rounds": 2, "mode": "reflect"}', "preflexor")
    unknown = sorted(set(ext) - set(_EXTENSION_KEYS))
    if unknown:
        raise bad(f"unknown preflexor setting {unknown[0]!r}; known: {', '.join(_EXTENSION_KEYS)}", f"preflexor.{unknown[0]}")

    effort = budgets.effort(body)
    show_reasoning = effort is None or effort[0] != "none"
    rec: dict[str, tuple[str, Any]] = {}
    if effort is not None:
        rec["rounds"] = (effort[1], settings.effort_rounds(effort[0]))
    if (budget := budgets.thinking_budget(body, settings.max_tokens_limit)) is not None:
        rec["thinking_budget"] = budget
    for key, kind in (("rounds", int), ("mode", str), ("integrate", bool), ("thinking_budget", int)):
        if ext.get(key) is not None:
            rec[key] = (f"preflexor.{key}", _typed(ext, key, kind, None, f"preflexor.{key}"))
    if system is not None:
        rec["system"] = ("messages", system)
    rounds = rec.get("rounds", (None, recursion.rounds))[1]
    if rounds > settings.max_rounds and "rounds" in rec:
        raise bad(f"{rec['rounds'][0]} asks for {rounds} rounds; this server allows at most {settings.max_rounds} (--max-rounds)", rec["rounds"][0])
    if "mode" in rec:
        from ..reasoning.strategies import check_mode

        try:
            check_mode(rec["mode"][1])
        except UsageError as err:
            raise bad(f"unknown preflexor.mode {rec['mode'][1]!r}; {err.hint}", "preflexor.mode") from None

    samp: dict[str, tuple[str, Any]] = {}
    for names, field, kind in (
        (("temperature",), "temperature", float),
        (("top_p",), "top_p", float),
        (("top_k",), "top_k", int),
        (("min_p",), "min_p", float),
        (("repeat_penalty", "repetition_penalty"), "repeat_penalty", float),
        (("dry_multiplier",), "dry_multiplier", float),
        (("dry_base",), "dry_base", float),
        (("dry_allowed_length",), "dry_allowed_length", int),
        (("max_completion_tokens", "max_tokens", "max_output_tokens"), "max_tokens", int),  # max_output_tokens: /v1/responses
        (("seed",), "seed", int),
    ):
        name = next((k for k in names if body.get(k) is not None), None)
        if name is not None:
            samp[field] = (name, _typed(body, name, kind, None))
    if "max_tokens" in samp and samp["max_tokens"][1] > settings.max_tokens_limit:
        name, value = samp["max_tokens"]
        raise bad(f"{name} is {value}; this server allows at most {settings.max_tokens_limit} per model call (--max-tokens-limit)", name)

    return Job(
        question=question,
        sampling=_replace(sampling, samp),
        recursion=_replace(recursion, rec),
        stream=stream,
        include_usage=include_usage,
        show_reasoning=show_reasoning,
        transcript=_typed(ext, "transcript", bool, False, "preflexor.transcript"),
        stop=_stops(body.get("stop")),
        system=system if system is not None else recursion.system,
    )


def _typed(obj: dict, key: str, kind: type, default: Any, param: str | None = None) -> Any:
    """``obj[key]`` if it has JSON type ``kind`` (ints are floats too; booleans are never numbers)."""
    value = obj.get(key)
    if value is None:
        return default
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise bad(f"{param or key} must be {names[kind]}, got {value!r}", param or key)
    return value


def _replace(base, overrides: dict[str, tuple[str, Any]]):
    """``base`` with the overrides; a value out of range is a 400 naming the request field."""
    if not overrides:
        return base
    try:
        return dataclasses.replace(base, **{field: value for field, (_, value) in overrides.items()})
    except UsageError as err:
        field = getattr(err, "param", None)
        name = overrides[field][0] if field in overrides else field
        message = err.message
        flags = _flags(type(base), field)
        if name and flags:  # say it in the request's words: "temperature must be ..." rather than "--temperature ..."
            for flag in flags:
                message = message.replace(flag, name)
        raise bad(message, name) from None


def _flags(cls: type, field: str | None) -> list[str]:
    for f in dataclasses.fields(cls):
        if f.name == field:
            return sorted((x.split("/")[0] for x in f.metadata.get("flags", ()) if x.startswith("--")), key=len, reverse=True)
    return []


def _stops(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) and s for s in stops):
        raise bad("stop must be a non-empty string or a list of up to 4 of them", "stop")
    return tuple(stops)


def _text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text") or not isinstance(part.get("text"), str):
                raise bad(f"{where}: only text content is supported", where)
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"{where} must be a string or a list of text parts", where)


def _conversation(messages: Any) -> tuple[str | None, str]:
    """(system prompt or None, the question with any earlier turns before it)."""
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list of {role, content} objects", "messages")
    system: list[str] = []
    turns: list[tuple[str, str]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content", where)
        role = m.get("role")
        text = _text(m.get("content"), f"{where}.content")
        if role in ("system", "developer"):
            system.append(text)
        elif role in ("user", "assistant"):
            turns.append((role, text))
        else:
            raise bad(f"{where}.role {role!r} is not supported (system, developer, user, assistant)", f"{where}.role")
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise bad("the last message must be a non-empty user message", "messages")
    question = turns[-1][1]
    if len(turns) > 1:
        earlier = "\n".join(f"{'User' if r == 'user' else 'Assistant'}: {t.strip()}" for r, t in turns[:-1] if t.strip())
        question = f"Earlier in this conversation:\n{earlier}\n\n{question}"
    return ("\n\n".join(system) if system else None), question
