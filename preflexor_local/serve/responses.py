"""``POST /v1/responses``, stateless: the Responses API's request -> a ``Job``, and engine pieces -> its items and events.

Request: ``input`` (a string, or message items whose content is text; earlier
``reasoning`` items are skipped, as this server keeps no state), ``instructions``
(the system prompt), ``reasoning: {effort}`` (rounds, as ``reasoning_effort``),
``max_output_tokens`` (per model call, so it caps the final answer's call; OpenAI's
counts the reasoning too), ``temperature``, ``top_p`` and our ``preflexor`` object.
Everything else maps as on chat completions (request.py, budgets.py).

Output: one ``reasoning`` item whose content parts are the labelled sections of
every round (``[round 1 · thinking]``, ``[round 1 · critic · critique]``, ...), then
one ``message`` item with the final answer. Streamed, the events come in the order
the openai SDK's stream helper checks: ``response.created``, ``response.in_progress``,
then per item ``output_item.added``, per part ``content_part.added``, its
``reasoning_text``/``output_text`` deltas and ``.done``, ``content_part.done``,
``output_item.done``; last ``response.completed`` with usage (or ``response.incomplete``
when the final answer's call hit its token limit, as OpenAI does at max_output_tokens).
A failure after the headers went out is an ``error`` event, then ``response.failed``.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ..config import Recursion, Sampling
from ..reasoning.engine import Event
from ..reasoning.transcript import Transcript
from .errors import APIError
from .request import Job, bad, parse_chat
from .settings import ServeSettings
from .stream import KEEPALIVE, Translator, finish_reason, usage
from .worker import Failed, Ticket

_TEXT_PARTS = ("input_text", "output_text", "text")
_ROLES = ("user", "assistant", "system", "developer")


def parse_responses(body: Any, settings: ServeSettings, sampling: Sampling, recursion: Recursion) -> Job:
    """A Responses API body as a ``Job``; a 400 naming the ``input`` field that is wrong."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", code="invalid_json")
    for key in ("previous_response_id", "conversation"):
        if body.get(key) is not None:
            raise bad(f"{key} is not supported: this server keeps no state; send the whole conversation in input", key, "unsupported_parameter")
    messages = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise bad("instructions must be a string", "instructions")
        messages.append({"role": "system", "content": instructions})
    messages += _input_messages(body.get("input"))
    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"].strip():
        raise bad("input must end with a non-empty user message (or be a non-empty string)", "input")
    chat = {k: v for k, v in body.items() if k not in ("input", "instructions", "messages")}
    return parse_chat({**chat, "messages": messages}, settings, sampling, recursion)


def _input_messages(value: Any) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise bad("input must be a non-empty string or a list of message items", "input")
    out = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad(f"{where} must be an object like {{role, content}}", where)
        kind = item.get("type", "message")
        if kind == "reasoning":
            continue  # a previous turn's reasoning: the engine reasons afresh
        if kind != "message":
            raise bad(f"{where}.type {kind!r} is not supported: only message items (and reasoning items, skipped)", f"{where}.type")
        role = item.get("role")
        if role not in _ROLES:
            raise bad(f"{where}.role must be one of {', '.join(_ROLES)}; got {role!r}", f"{where}.role")
        out.append({"role": role, "content": _text(item.get("content"), f"{where}.content")})
    return out


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(f"{where} must be a string or a list of text parts", where)
    parts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict) or part.get("type") not in _TEXT_PARTS or not isinstance(part.get("text"), str):
            raise bad(f"{where}[{j}]: only text parts ({', '.join(_TEXT_PARTS)}) are supported", f"{where}[{j}]")
        parts.append(part["text"])
    return "".join(parts)


def echo(body: dict) -> dict:
    """The request settings a Response object repeats back."""
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    return {
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
        "user": body.get("user"),
    }


def response_usage(transcript: Transcript) -> dict:
    """Chat usage in the Responses API's names: the same counts, every call's tokens included."""
    u = usage(transcript)
    return {
        "input_tokens": u["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": u["prompt_tokens_details"]["cached_tokens"], "cache_write_tokens": 0},
        "output_tokens": u["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": u["completion_tokens_details"]["reasoning_tokens"]},
        "total_tokens": u["total_tokens"],
    }


class ResponseBuilder:
    """Builds one response from reasoning/content pieces; every call returns the SSE events it caused.

    The whole (non-streamed) response is built the same way with the events dropped, so the
    two cannot differ. A piece of a kind other than the open item's closes that item and opens
    a new one; a reasoning piece that starts a section (``section=True``) starts a new part.
    """

    def __init__(self, model: str, request: dict | None = None):
        self.model, self.request = model, request or {}
        self.id = _id("resp")
        self.created_at = int(time.time())
        self.output: list[dict] = []
        self.seq = 0
        self._open: dict | None = None  # the item being written
        self._part: dict | None = None  # its content part being written
        self.body: dict | None = None  # the finished Response object
        self.error: APIError | None = None  # why it failed, if it did

    # -- events ---------------------------------------------------------------
    def _event(self, kind: str, **fields) -> bytes:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: ".encode() + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"

    def start(self) -> list[bytes]:
        return [
            self._event("response.created", response=self.response("in_progress")),
            self._event("response.in_progress", response=self.response("in_progress")),
        ]

    def piece(self, kind: str, text: str, section: bool = False) -> list[bytes]:
        """``kind`` is "reasoning" or "content" (as ``stream.Translator`` hands them out)."""
        item_type = "reasoning" if kind == "reasoning" else "message"
        out: list[bytes] = []
        if self._open is not None and self._open["type"] != item_type:
            out += self._close_item("completed")
        if self._open is None:
            out += self._open_item(item_type)
        if self._part is None or (section and self._part["text"]):
            out += self._close_part()
            out += self._open_part()
        self._part["text"] += text
        where = {"item_id": self._open["id"], "output_index": len(self.output) - 1, "content_index": len(self._open["content"]) - 1}
        if item_type == "reasoning":
            out.append(self._event("response.reasoning_text.delta", delta=text, **where))
        else:
            out.append(self._event("response.output_text.delta", delta=text, logprobs=[], **where))
        return out

    def finish(self, transcript: Transcript, reason: str, extra: dict | None = None) -> list[bytes]:
        """Close what is open, then ``response.completed`` (or ``.incomplete`` when the answer was cut)."""
        status = "incomplete" if reason == "length" else "completed"
        out = self._close_item(status)
        body = self.body = self.response(status, transcript, extra)
        return out + [self._event("response.incomplete" if status == "incomplete" else "response.completed", response=body)]

    def failed(self, error: APIError) -> list[bytes]:
        """The stream's end after a failure: an ``error`` event, then ``response.failed`` (OpenAI's order)."""
        out = self._close_item("incomplete")
        out.append(self._event("error", code=error.code, message=error.message, param=error.param))
        body = self.response("failed")
        # response.error.code is one of OpenAI's fixed words; the error event above carries ours
        body["error"] = {"code": "invalid_prompt" if 400 <= error.status < 500 else "server_error", "message": error.message, "param": error.param}
        return out + [self._event("response.failed", response=body)]

    # -- items ----------------------------------------------------------------
    def _open_item(self, item_type: str) -> list[bytes]:
        if item_type == "reasoning":
            item = {"id": _id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
        else:
            item = {"id": _id("msg"), "type": "message", "role": "assistant", "status": "in_progress", "content": []}
        self.output.append(item)
        self._open = item
        return [self._event("response.output_item.added", output_index=len(self.output) - 1, item=_copy(item))]

    def _open_part(self) -> list[bytes]:
        item = self._open
        part = {"type": "reasoning_text", "text": ""} if item["type"] == "reasoning" else {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        item["content"].append(part)
        self._part = part
        where = {"item_id": item["id"], "output_index": len(self.output) - 1, "content_index": len(item["content"]) - 1}
        return [self._event("response.content_part.added", part=dict(part), **where)]

    def _close_part(self) -> list[bytes]:
        if self._part is None:
            return []
        item, part = self._open, self._part
        self._part = None
        where = {"item_id": item["id"], "output_index": len(self.output) - 1, "content_index": len(item["content"]) - 1}
        if item["type"] == "reasoning":
            done = self._event("response.reasoning_text.done", text=part["text"], **where)
        else:
            done = self._event("response.output_text.done", text=part["text"], logprobs=[], **where)
        return [done, self._event("response.content_part.done", part=dict(part), **where)]

    def _close_item(self, status: str) -> list[bytes]:
        if self._open is None:
            return []
        out = self._close_part()
        item, self._open = self._open, None
        item["status"] = status if item["type"] == "message" else "completed"
        return out + [self._event("response.output_item.done", output_index=len(self.output) - 1, item=_copy(item))]

    # -- the Response object --------------------------------------------------
    def response(self, status: str, transcript: Transcript | None = None, extra: dict | None = None) -> dict:
        body = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "model": self.model,
            "output": [_copy(item) for item in self.output] if status != "in_progress" else [],
            "parallel_tool_calls": False,
            "previous_response_id": None,
            "store": False,
            "text": {"format": {"type": "text"}},
            "tool_choice": "none",
            "tools": [],
            "truncation": "disabled",
            "usage": response_usage(transcript) if transcript is not None else None,
            **echo(self.request),
        }
        if status in ("completed", "incomplete"):
            body["completed_at"] = int(time.time())
        if extra:
            body.update(extra)
        return body


async def run(ticket: Ticket, builder: ResponseBuilder, keepalive: float | None) -> AsyncIterator[bytes]:
    """The ticket's events as Responses API SSE bytes; a whole response reads ``builder.body``/``.error`` after.

    ``keepalive``: seconds of silence before an SSE comment (None: no comments, for a whole response).
    """
    job = ticket.job
    tr = Translator(job.show_reasoning, job.stop)
    try:
        for b in builder.start():
            yield b
        while True:
            try:
                item = await asyncio.wait_for(ticket.events.get(), timeout=keepalive)
            except TimeoutError:
                yield KEEPALIVE  # queued, or a long prompt evaluation: keep proxies and clients from timing out
                continue
            if isinstance(item, Event):
                for kind, text in tr.feed(item):  # a call's first piece is its label: a new reasoning part
                    for b in builder.piece(kind, text.lstrip("\n") if item.kind == "call" else text, section=item.kind == "call"):
                        yield b
                continue
            if isinstance(item, Failed):
                builder.error = item.error
                for b in builder.failed(item.error):
                    yield b
                return
            t = item.transcript
            for kind, text in tr.finish(t):  # reasoning here is the note on an empty answer: a section of its own
                for b in builder.piece(kind, text.lstrip("\n") if kind == "reasoning" else text, section=kind == "reasoning"):
                    yield b
            extra = {"preflexor": {"transcript": t.to_dict()}} if job.transcript else None
            for b in builder.finish(t, finish_reason(t, tr.stopped), extra):
                yield b
            return
    finally:
        ticket.cancel()  # the client left (or we are done: then a no-op); stops generation at the next token


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"  # OpenAI's shape for Responses ids: resp_…, rs_…, msg_…


def _copy(item: dict) -> dict:
    return {**item, "content": [dict(p) for p in item["content"]]}
