"""The names clients send for "how much to think", mapped onto our two knobs: rounds and the thinking budget.

Every OpenAI-compatible server grew its own spelling, and clients send whichever
they were written for. Read in this order; the first one present wins:

Rounds (and whether the reasoning is shown), as an *effort*:

* ``reasoning_effort`` (chat), then ``reasoning.effort`` (Responses API, Ollama):
  ``none`` -> 1 round with the reasoning hidden; ``minimal``/``low``/``medium``/``high``
  -> the server's ``--effort-*`` rounds;
* Ollama's ``think``: ``false`` (or ``0``) -> none; ``"low"``/``"medium"``/``"high"`` -> that
  effort; ``true`` -> no change (this server always thinks); a number -> a thinking budget;
* ``chat_template_kwargs.enable_thinking: false`` (Qwen3 style) -> none;
* a budget of ``0`` under any name below -> none (llama-server: "end thinking at once").

``preflexor.rounds`` wins over all of them (request.py).

Thinking budget (tokens for each thinking or reflection section before the engine
closes it for the model), after ``preflexor.thinking_budget``:

* ``thinking_budget_tokens``, then ``reasoning_budget`` (llama-server users),
  then ``chat_template_kwargs.thinking_budget`` (Qwen3), then ``think: N``;
* ``-1`` means unrestricted (the section may use the call's ``max_tokens``), ``0`` see above,
  ``N >= 1`` is the budget.
"""

from __future__ import annotations

from typing import Any

from .errors import APIError

EFFORTS = ("none", "minimal", "low", "medium", "high")
THINK_LEVELS = ("low", "medium", "high")
UNRESTRICTED = -1


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, param=param, code="invalid_value")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _budgets(body: dict) -> list[tuple[str, Any]]:
    """(request name, value) for every budget name present, in precedence order."""
    kwargs = body.get("chat_template_kwargs")
    kwargs = kwargs if isinstance(kwargs, dict) else {}
    found = [(name, body.get(name)) for name in ("thinking_budget_tokens", "reasoning_budget")]
    found.append(("chat_template_kwargs.thinking_budget", kwargs.get("thinking_budget")))
    think = body.get("think")
    if _is_int(think):
        found.append(("think", think))
    return [(name, value) for name, value in found if value is not None]


def _checked(name: str, value: Any) -> int:
    if not _is_int(value) or value < UNRESTRICTED:
        raise _bad(f"{name} must be an integer: -1 (unrestricted), 0 (no thinking) or a number of tokens; got {value!r}", name)
    return value


def effort(body: dict) -> tuple[str, str] | None:
    """(effort, the request field that set it) or None when the request says nothing about it."""
    for param, value in (("reasoning_effort", body.get("reasoning_effort")), ("reasoning.effort", _reasoning_effort(body))):
        if value is not None:
            if value not in EFFORTS:
                raise _bad(f"{param} must be one of {', '.join(EFFORTS)}; got {value!r}", param)
            return value, param
    think = body.get("think")
    if think is not None:
        if think is False or think == 0:
            return "none", "think"
        if isinstance(think, str):
            if think not in THINK_LEVELS:
                raise _bad(f"think must be true, false, one of {', '.join(THINK_LEVELS)}, or a number of tokens; got {think!r}", "think")
            return think, "think"
        if think is not True and not _is_int(think):
            raise _bad(f"think must be true, false, one of {', '.join(THINK_LEVELS)}, or a number of tokens; got {think!r}", "think")
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise _bad("chat_template_kwargs must be an object", "chat_template_kwargs")
    if (kwargs or {}).get("enable_thinking") is False:
        return "none", "chat_template_kwargs.enable_thinking"
    budgets = _budgets(body)
    if budgets and _checked(*budgets[0]) == 0:
        return "none", budgets[0][0]
    return None


def thinking_budget(body: dict, limit: int) -> tuple[str, int | None] | None:
    """(request field, budget or None for unrestricted) from the first budget name present, else None.

    A budget of 0 is an effort (see ``effort``) and leaves the budget alone. ``limit`` is the
    server's per-call token cap (``--max-tokens-limit``): a section can never use more.
    """
    budgets = _budgets(body)
    if not budgets:
        return None
    name, value = budgets[0]
    value = _checked(name, value)
    if value == 0:
        return None
    if value == UNRESTRICTED:
        return name, None
    if value > limit:
        raise _bad(f"{name} is {value}; this server allows at most {limit} tokens per model call (--max-tokens-limit)", name)
    return name, value


def _reasoning_effort(body: dict) -> Any:
    reasoning = body.get("reasoning")
    if reasoning is None:
        return None
    if not isinstance(reasoning, dict):
        raise _bad('reasoning must be an object like {"effort": "medium"}', "reasoning")
    return reasoning.get("effort")
