"""The backend protocol: generate from chat messages plus an assistant prefill.

A backend turns a ``GenerationRequest`` (messages, prefill, sampling, stop
strings) into streamed text and a final ``Generation`` with token counts and
timings. Text is the continuation only (the prefill is not repeated), special
tokens are kept, and a matched stop string is cut off; nothing else is.

``LocalBackend`` is the shared loop for engines that run in this process
(llama.cpp, transformers, MLX): it renders the prompt with ``render_prompt``,
enforces the context-window policy, scans stop strings across token
boundaries and counts tokens. An engine only supplies tokenisation, a token
iterator and detokenisation.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..config import Sampling
from ..errors import ContextOverflowError
from ..prompt import ChatTemplate, Messages, render_prompt


@dataclass
class GenerationRequest:
    messages: Messages
    prefill: str = ""
    sampling: Sampling = field(default_factory=Sampling)
    stop: tuple[str, ...] = ()
    max_tokens: int | None = None  # overrides sampling.max_tokens for this call
    # (after, stop) pairs: ``stop`` ends generation where it occurs once ``after`` has been generated (a rewrite that
    # opens one of its sections a second time is starting over; an empty ``after`` arms it from the start); honoured
    # with ``sampling.stop_repeats``, like the loop guard, and reported as finish_reason "restart".
    stops_after: tuple[tuple[str, str], ...] = ()
    # Text the DRY penalty counts as already written by this reply, so repeating it verbatim costs what a repeat of
    # the reply's own words costs (a critique may not restate the thinking it reviews). Honoured by the in-process
    # backends when DRY is on; an OpenAI-compatible server samples by its own settings.
    dry_source: str = ""

    @property
    def limit(self) -> int:
        return self.max_tokens if self.max_tokens is not None else self.sampling.max_tokens


@dataclass
class Generation:
    text: str
    # "eos", "stop", "length" (max tokens or context window), "loop" (verbatim repetition),
    # "restart" (a stop of ``stops_after``)
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the previous call's cache
    seconds: float = 0.0
    ttft: float | None = None  # seconds to the first generated token
    stop: str | None = None  # the stop string that ended generation

    @property
    def tokens_per_second(self) -> float:
        gen_time = self.seconds - (self.ttft or 0.0)
        return self.completion_tokens / gen_time if gen_time > 0 else 0.0


class Backend(ABC):
    """One loaded model. ``stream`` yields text chunks, then one ``Generation``."""

    kind: ClassVar[str] = "backend"
    # One of the embedded models (the default and its base): the engine's small-model guards are on for it by default.
    embedded: bool = False
    # Whether calls may come from several threads at once and run together (a server; a llama.cpp model loaded with
    # parallel slots batches them). Asked by serve --parallel, eval's batched samples and pair generation.
    concurrent: bool = False

    def __init__(self, name: str):
        self.name = name

    @abstractmethod
    def stream(self, request: GenerationRequest) -> Iterator[str | Generation]: ...

    def generate(self, request: GenerationRequest, on_text: Callable[[str], None] | None = None) -> Generation:
        result: Generation | None = None
        for item in self.stream(request):
            if isinstance(item, Generation):
                result = item
            elif on_text is not None:
                on_text(item)
        assert result is not None, f"{type(self).__name__}.stream ended without a Generation"
        return result

    def describe(self) -> dict:
        return {"backend": self.kind, "model": self.name}

    def close(self) -> None:
        """Free the engine's memory now rather than at interpreter exit."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StopScanner:
    """Finds stop strings in streamed text, holding back any tail that may start one."""

    def __init__(self, stops: tuple[str, ...], context: str = "", after: tuple[tuple[str, str], ...] = ()):
        """``context`` is the end of the prompt: a stop string may begin in it ("\\nAnswer:" right after a
        pre-filled newline) but what is returned is only generated text. ``after`` holds (after, stop) pairs whose
        stop counts only once ``after`` is in the generated text (an empty ``after``: from the start);
        ``restarted`` tells such a match from a plain stop."""
        self.stops = tuple(s for s in dict.fromkeys(stops) if s)
        self.after = tuple(pair for pair in dict.fromkeys(after) if pair[1])
        self.restarted = False
        keep = max((len(s) for s in self.stops), default=1) - 1
        self._context = context[len(context) - keep :] if keep > 0 else ""
        self._all = self._context
        self._emitted = len(self._context)
        self.matched: str | None = None

    @property
    def text(self) -> str:
        """The generated text so far, cut at a matched stop string."""
        return self._all[len(self._context) :]

    def push(self, delta: str) -> str:
        """Add text; return what is safe to show. After a match, ``matched`` is set."""
        if self.matched is not None or not delta:
            return ""
        start = max(0, self._emitted - max((len(s) for s in self.stops), default=0))
        self._all += delta
        hits = [(i, s, False) for s in self.stops if (i := self._find(s, start)) >= 0]
        hits += [(i, s, True) for a, s in self.after if (i := self._after(a, s)) >= 0]
        # The longest tail that may still become a stop: nothing from there on is shown yet, and a stop found
        # after its start waits, since that one would come first ("<|/" over "|" in "<<|" + "/").
        hold = 0
        armed = [s for a, s in self.after if self._all.find(a, len(self._context)) >= 0]
        for s in (*self.stops, *armed):
            for n in range(min(len(s) - 1, len(self._all)), hold, -1):
                if self._all.endswith(s[:n]):
                    hold = n
                    break
        undecided = len(self._all) - hold
        if hits and min(hits)[0] <= undecided:
            i, self.matched, self.restarted = min(hits)
            self._all = self._all[: max(i, len(self._context))]
            out, self._emitted = self._all[self._emitted :], len(self._all)
            return out
        end = max(undecided, len(self._context))
        out, self._emitted = self._all[self._emitted : end], max(self._emitted, end)
        return out

    def _find(self, stop: str, start: int) -> int:
        """First occurrence of ``stop`` that ends in generated text (one wholly inside the prompt is not a stop)."""
        i = self._all.find(stop, start)
        while i >= 0 and i + len(stop) <= len(self._context):
            i = self._all.find(stop, i + 1)
        return i

    def _after(self, after: str, stop: str) -> int:
        """Where ``stop`` first begins after the end of ``after``'s first occurrence in the generated text, or -1."""
        first = self._all.find(after, len(self._context))
        return -1 if first < 0 else self._all.find(stop, first + len(after))

    def flush(self) -> str:
        out, self._emitted = self._all[self._emitted :], len(self._all)
        return out


def request_scanner(request: GenerationRequest, template_stops: tuple[str, ...], context: str) -> StopScanner:
    """The scanner for one request: its stops and the template's, and its ``stops_after`` when repeats are stopped."""
    after = request.stops_after if request.sampling.stop_repeats else ()
    return StopScanner((*request.stop, *template_stops), context=context, after=after)


def repeats_at_end(text: str) -> bool:
    """Whether ``text`` ends in a verbatim loop: a passage of 64+ characters twice in a row, or a
    shorter one (8+) four times. Greedy small models fall into these and never leave; a looping
    paragraph can be longer than any fixed bound (the demo model's reached 450 characters)."""
    n = len(text)
    last = text[-1:]
    for period in range(8, n // 2 + 1):
        if text[n - 1 - period] != last:  # cheap test first: most periods fail on the last character
            continue
        times = 2 if period >= 64 else 4
        if period * times > n:
            continue
        tail = text[n - period :]
        if all(text[n - (k + 1) * period : n - k * period] == tail for k in range(1, times)):
            return True
    return False


LOOP_CHECK_EVERY = 8  # tokens (or server chunks) between loop checks

# The longest context window a model opens unless --ctx asks for more: a window costs KV memory whether or not a
# call fills it, and the engine's calls fit well inside 8192 tokens.
CONTEXT_CAP = 8192


def context_window(trained: int | None, asked: int | None = None) -> int:
    """The context window an in-process model is opened with: ``asked`` (``--ctx``) when given, else the length
    the model was trained for (``CONTEXT_CAP`` when unknown), at most ``CONTEXT_CAP``."""
    if asked:
        return asked
    return min(int(trained or CONTEXT_CAP), CONTEXT_CAP)


def common_prefix(a: Sequence[int], b: Sequence[int], limit: int | None = None) -> int:
    """Length of the common prefix of two token-id lists, at most ``limit`` (never below 0)."""
    n = min(len(a), len(b)) if limit is None else max(0, min(len(a), len(b), limit))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reusable_prefix(held: Sequence[int], ids: Sequence[int]) -> int:
    """How many leading tokens of the prompt ``ids`` a KV cache holding ``held`` can keep: their common prefix,
    short of the last prompt token, which is always evaluated again so that its logits are fresh."""
    return common_prefix(held, ids, len(ids) - 1)


class Detokenizer(ABC):
    """Turns generated token ids into text increments (special tokens kept)."""

    @abstractmethod
    def push(self, token: int) -> str: ...

    def flush(self) -> str:
        return ""


class TextDetokenizer(Detokenizer):
    """Incremental decoding for a tokenizer that decodes whole id lists (Hugging Face's, also inside mlx-lm).

    * **The prompt's last tokens are left context.** A SentencePiece word start ("▁is") decoded alone loses its
      space (the decoder strips the text's first one), so the first generated word would stick to the prefill.
    * **Whole characters only.** Text is released when the decoded tail is not a partial UTF-8 character (a
      character split over byte-fallback tokens decodes to U+FFFD until its last byte arrives); ``flush`` releases
      what is left.
    * Special tokens are kept.
    """

    def __init__(self, tokenizer, prompt_ids: Sequence[int] = (), context: int = 4):
        self.tok = tokenizer
        self.ids = list(prompt_ids[-context:])  # the decoder's start-of-text rules fall on these, not on the reply
        self.prefix = 0
        self.read = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def push(self, token: int) -> str:
        self.ids.append(token)
        return self._advance(final=False)

    def _advance(self, final: bool) -> str:
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def flush(self) -> str:
        return self._advance(final=True) if self.read < len(self.ids) else ""


def needs_prefix(prompt: str, bos_token: str, adds_bos: bool) -> bool:
    """Whether ``encode`` puts the tokenizer's BOS (or other prefix) before ``prompt``: when the tokenizer adds one
    and the rendered template did not already write it (a second BOS changes every model's output)."""
    return adds_bos and not (bos_token and prompt.startswith(bos_token))


class LocalBackend(Backend):
    """Shared generation loop for in-process engines."""

    template: ChatTemplate
    context_length: int

    @abstractmethod
    def encode(self, prompt: str) -> list[int]:
        """Token ids of a rendered prompt (BOS added only if the template did not write it)."""

    @abstractmethod
    def token_stream(self, ids: list[int], sampling: Sampling, max_new: int, dry_source: Sequence[int] = ()) -> Iterator[int]:
        """Sampled token ids; the loop stops consuming when it is done. ``dry_source``: tokens DRY treats as
        generated before the first (``GenerationRequest.dry_source``)."""

    @abstractmethod
    def is_end(self, token: int) -> bool:
        """Whether ``token`` ends generation (EOS / end-of-turn)."""

    @abstractmethod
    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer: ...

    def cached_prefix(self, ids: list[int]) -> int:
        """How many leading prompt tokens the engine already holds in its KV cache."""
        return 0

    def render(self, request: GenerationRequest) -> str:
        return render_prompt(self.template, request.messages, request.prefill)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def source_ids(self, text: str) -> list[int]:
        """Token ids of a plain text, without the BOS (or other prefix) ``encode`` puts before a prompt."""
        return self.encode(text)[len(self.encode("")) :]

    def describe(self) -> dict:
        return {**super().describe(), "template": self.template.name, "context_length": self.context_length}

    def stream(self, request: GenerationRequest) -> Iterator[str | Generation]:
        t0 = time.perf_counter()
        prompt = self.render(request)
        ids = self.encode(prompt)
        room = self.context_length - len(ids)
        if room < 1:
            raise ContextOverflowError(
                f"the prompt is {len(ids)} tokens but {self.name}'s context window is {self.context_length}",
                hint="raise --ctx (up to the model's trained length) or shorten the question, context or --recursive rounds",
            )
        # Policy: a prompt that fits is never truncated; the generation budget shrinks to the room left.
        max_new = min(request.limit, room)
        cached = self.cached_prefix(ids)
        scanner = request_scanner(request, self.template.stop, prompt)
        detok = self.detokenizer(ids)
        n, finish, ttft = 0, "length", None
        source = self.source_ids(request.dry_source) if request.dry_source and request.sampling.dry_multiplier > 0 else []
        tokens = self.token_stream(ids, request.sampling, max_new, dry_source=source)
        try:
            for token in tokens:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                n += 1
                if self.is_end(token):
                    finish = "eos"
                    break
                safe = scanner.push(detok.push(token))
                if safe:
                    yield safe
                if scanner.matched is not None:
                    finish = "restart" if scanner.restarted else "stop"
                    break
                if n >= max_new:
                    break
                if request.sampling.stop_repeats and n % LOOP_CHECK_EVERY == 0 and repeats_at_end(scanner.text):
                    finish = "loop"
                    break
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:  # a generator: stop the engine's decode loop now
                close()
        if scanner.matched is None:
            tail = scanner.push(detok.flush()) + scanner.flush()
            if tail:
                yield tail
        yield Generation(
            text=scanner.text,
            finish_reason=finish,
            prompt_tokens=len(ids),
            completion_tokens=n,
            cached_tokens=cached,
            seconds=time.perf_counter() - t0,
            ttft=ttft,
            stop=scanner.matched,
        )
