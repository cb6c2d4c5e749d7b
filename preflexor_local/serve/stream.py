"""Engine events -> OpenAI response pieces, and the SSE framing.

One ``Translator`` serves the streamed and the whole response alike, so the
reasoning a client reads is the same either way: every model call before the
final answer (thinking, reflection, critique, improved thinking, intermediate
answers) goes to ``reasoning`` under a short ``[round N · what]`` label; the
final answer (the last round's answer, or the integrator's) goes to ``content``,
with surrounding whitespace trimmed and cut at the request's stop strings.
"""

from __future__ import annotations

import json
import time
import uuid

from ..backends.base import StopScanner
from ..reasoning.engine import Event
from ..reasoning.transcript import Call, Transcript

_WHAT = {"thinking": "thinking", "reflection": "reflection", "answer": "answer", "critique": "critique", "rewrite": "improved thinking"}

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"


def sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def label(event: Event) -> str:
    what = _WHAT.get(event.channel, event.channel)
    return f"[round {event.round} · {what}]" if event.role == "reasoner" else f"[round {event.round} · {event.role} · {what}]"


class Translator:
    """Feeds on engine events; returns ("reasoning" | "content", text) pieces in order."""

    def __init__(self, show_reasoning: bool = True, stop: tuple[str, ...] = ()):
        self.show_reasoning = show_reasoning
        self.reasoning: list[str] = []
        self.content = ""  # what has been handed out as content so far
        self.stopped = False  # a stop string cut the answer
        self._stops = stop
        self._scanner = StopScanner(stop) if stop else None
        self._started = False  # content begins at its first non-space character
        self._pending_space = ""  # trailing whitespace, sent only if more text follows

    def feed(self, event: Event) -> list[tuple[str, str]]:
        if event.channel == "final":
            return [] if event.kind == "call" else self._content(event.text)
        if not self.show_reasoning:
            return []
        if event.kind == "call":
            text = ("\n\n" if self.reasoning else "") + label(event) + "\n"
        else:
            text = event.text
        if not text:
            return []
        self.reasoning.append(text)
        return [("reasoning", text)]

    def finish(self, transcript: Transcript) -> list[tuple[str, str]]:
        """What is still owed at the end: text held back by a possible stop string, or the final answer
        when none streamed (an empty integration falls back to the last answer)."""
        if self.stopped:
            return []
        if not self.content and transcript.final_answer:
            self._scanner = StopScanner(self._stops) if self._stops else None
            out = self._content(transcript.final_answer)
        else:
            out = []
        if self._scanner is not None and not self.stopped:
            out += self._trimmed(self._scanner.flush())
        if not self.content and (note := empty_answer_note(transcript)):
            text = ("\n\n" if self.reasoning else "") + note  # shown even with the reasoning hidden: it says why nothing came
            self.reasoning.append(text)
            out.append(("reasoning", text))
        return out

    def _content(self, text: str) -> list[tuple[str, str]]:
        if self.stopped:
            return []
        if self._scanner is not None:
            text = self._scanner.push(text)
            self.stopped = self._scanner.matched is not None
        return self._trimmed(text)

    def _trimmed(self, text: str) -> list[tuple[str, str]]:
        if not self._started:
            text = text.lstrip()
            if not text:
                return []
            self._started = True
        body = text.rstrip()
        out = (self._pending_space + body) if body else ""
        self._pending_space = (self._pending_space if not body else "") + text[len(body) :]
        if not out:
            return []
        self.content += out
        return [("content", out)]

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)


def final_call(transcript: Transcript) -> Call | None:
    """The model call that wrote the final answer: the integration, else the last round's answer."""
    if transcript.integrated:
        return transcript.integration
    return transcript.rounds[-1].calls[-1] if transcript.rounds and transcript.rounds[-1].calls else None


def finish_reason(transcript: Transcript, stopped: bool) -> str:
    """ "length" when the call that wrote the final answer ran out of tokens, else "stop"."""
    if stopped:
        return "stop"
    call = final_call(transcript)
    return "length" if call is not None and call.finish_reason == "length" else "stop"


def empty_answer_note(transcript: Transcript) -> str | None:
    """Why the final answer is empty, as a labelled reasoning piece; None when it is not empty.

    Clients otherwise see ``content: ""`` as a success (the most reported failure of reasoning
    servers): a call cut at its token limit before any answer text says so, with the fix.
    """
    if transcript.final_answer.strip():
        return None
    call = final_call(transcript)
    where = f"[round {len(transcript.rounds)} · no answer]\n"
    if call is not None and call.finish_reason == "length":
        limit = (transcript.settings.get("sampling") or {}).get("max_tokens")
        tokens = f"all {limit} tokens" if limit else "all the tokens"
        return where + (
            f"The answer call used {tokens} of its max_tokens before writing any answer text (finish_reason: length). "
            "max_tokens applies to each model call: raise max_tokens (max_output_tokens on /v1/responses), or lower the thinking budget."
        )
    return where + "The model ended its answer without writing any text."


def usage(transcript: Transcript) -> dict:
    """Every token of every call: the critic's and the integrator's count as completion tokens too."""
    final = final_call(transcript)
    completion = transcript.completion_tokens
    return {
        "prompt_tokens": transcript.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": transcript.prompt_tokens + completion,
        "prompt_tokens_details": {"cached_tokens": sum(c.cached_tokens for c in transcript.calls)},
        "completion_tokens_details": {"reasoning_tokens": completion - (final.completion_tokens if final else 0)},
    }


class ChunkMaker:
    """Chunks of one streamed response, in OpenAI's shape (chat or text completion)."""

    def __init__(self, model: str, chat: bool = True):
        self.chat, self.model = chat, model
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())

    def _wrap(self, choice: dict) -> dict:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": [choice]}

    def role(self) -> dict | None:
        return self._wrap({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}) if self.chat else None

    def piece(self, kind: str, text: str) -> dict | None:
        if not self.chat:  # a text completion has no reasoning field: only the answer streams
            return self._wrap({"index": 0, "text": text, "logprobs": None, "finish_reason": None}) if kind == "content" else None
        delta = {"content": text} if kind == "content" else {"reasoning_content": text, "reasoning": text}
        return self._wrap({"index": 0, "delta": delta, "logprobs": None, "finish_reason": None})

    def end(self, reason: str, extra: dict | None = None) -> dict:
        choice = (
            {"index": 0, "delta": {}, "logprobs": None, "finish_reason": reason}
            if self.chat
            else {"index": 0, "text": "", "logprobs": None, "finish_reason": reason}
        )
        out = self._wrap(choice)
        if extra:
            out.update(extra)
        return out

    def usage(self, transcript: Transcript) -> dict:
        return {**self._wrap({}), "choices": [], "usage": usage(transcript)}
