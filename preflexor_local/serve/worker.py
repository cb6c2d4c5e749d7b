"""The threads that run requests on the loaded models, in order, through a bounded queue.

By default one thread (one lane) runs one request at a time: a loaded model has
one decode loop. With ``parallel`` N (``serve --parallel``), N lanes run N
requests at once; the llama.cpp backend then decodes their tokens together in
one batch (``backends.batching``) and an OpenAI-compatible upstream takes them
as concurrent HTTP calls. Each request is a ``Ticket``: the worker posts the engine's events into the
ticket's asyncio queue as they happen, then ``Done`` or ``Failed``.

Stopping: ``Ticket.cancel`` (the client went away) or ``Worker.stop_all`` (the
server is stopping) makes the engine's next event raise ``Cancelled`` in the
worker thread, which unwinds the engine and abandons the backend's token
generator, so generation stops within a token. Only a prompt evaluation already
inside llama.cpp/torch runs to its end.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..backends import Backend, GenerationRequest, LocalBackend
from ..config import Retrieval
from ..errors import PreflexorError
from ..format import ThinkingFormat
from ..reasoning.engine import Engine, Event
from ..reasoning.transcript import Transcript
from .errors import APIError, from_library
from .request import Job


class Cancelled(Exception):
    """Raised inside the engine (through ``on_event``) to stop a request that nobody waits for any more."""


@dataclass(frozen=True)
class Done:
    transcript: Transcript


@dataclass(frozen=True)
class Failed:
    error: APIError


class Ticket:
    """One request in the queue; ``events`` receives Event..., then Done or Failed."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop):
        self.job, self.loop = job, loop
        self.events: asyncio.Queue = asyncio.Queue()
        self.cancelled = threading.Event()
        self.finished = False
        self.cancelled_at: float | None = None
        self._on_cancel: Callable[[Ticket], None] | None = None

    def cancel(self) -> None:
        """Stop this request (idempotent; a no-op once it has finished)."""
        if self.finished or self.cancelled.is_set():
            return
        self.stop()
        if self._on_cancel is not None:
            self._on_cancel(self)

    def stop(self) -> None:
        if self.cancelled_at is None:
            self.cancelled_at = time.perf_counter()
        self.cancelled.set()

    # -- worker thread ------------------------------------------------------
    def emit(self, event: Event) -> None:
        if self.cancelled.is_set():
            raise Cancelled()
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is gone: nobody can read this any more
            raise Cancelled() from None

    def post(self, item: Done | Failed) -> None:
        self.finished = True
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, item)
        except RuntimeError:
            pass


class Worker:
    def __init__(
        self,
        roles: tuple[Backend, Backend, Backend],
        fmt: ThinkingFormat | None = None,
        max_queue: int = 16,
        log: Callable[[str], None] = lambda line: None,
        parallel: int = 1,
        store=None,
        retrieval: Retrieval | None = None,
    ):
        self.roles, self.fmt, self.max_queue, self.log, self.parallel = roles, fmt or ThinkingFormat(), max_queue, log, parallel
        self.store, self.retrieval = store, retrieval or Retrieval()  # a RAG store grounds every request
        self._cond = threading.Condition()  # an RLock inside: stop_all may run in a signal handler on the loop's thread
        self._waiting: deque[Ticket] = deque()
        self._running: set[Ticket] = set()
        self._stopping = False
        self._durations: deque[float] = deque(maxlen=8)
        self.stats = {"served": 0, "cancelled": 0, "failed": 0, "rejected": 0}
        self._threads = [threading.Thread(target=self._loop, name=f"preflexor-lane-{i}", daemon=True) for i in range(parallel)]
        for t in self._threads:
            t.start()

    # -- event-loop side ------------------------------------------------------
    def submit(self, job: Job, loop: asyncio.AbstractEventLoop) -> Ticket:
        """Queue ``job``; a 503 with Retry-After when ``max_queue`` requests already wait."""
        with self._cond:
            if self._stopping:
                raise APIError(503, "the server is shutting down", code="shutting_down")
            if len(self._waiting) >= self.max_queue and len(self._waiting) + len(self._running) >= self.max_queue + self.parallel:
                self._count("rejected")
                retry = self._retry_after()
                raise APIError(
                    503,
                    f"the server is busy ({len(self._waiting)} requests waiting); retry in {retry} s",
                    code="queue_full",
                    headers={"Retry-After": str(retry)},
                )
            ticket = Ticket(job, loop)
            ticket._on_cancel = self._withdraw
            self._waiting.append(ticket)
            self._cond.notify()
            return ticket

    def check_fits(self, job: Job) -> None:
        """A 400 before queueing when the question alone does not fit the reasoner's context window.

        Runs outside the worker thread: tokenising only reads the vocabulary (llama.cpp's tokenizer and
        HF fast tokenizers are safe to call while the same model decodes elsewhere). Later calls that
        overflow (long critiques, the integration) fail inside the run and are reported there.
        """
        reasoner = self.roles[0]
        if not isinstance(reasoner, LocalBackend):
            return
        messages = ([{"role": "system", "content": job.system}] if job.system else []) + [{"role": "user", "content": job.question}]
        n = reasoner.count_tokens(reasoner.render(GenerationRequest(messages=messages)))
        if n >= reasoner.context_length:
            raise APIError(
                400,
                f"the messages are {n} tokens but the model's context window is {reasoner.context_length}",
                param="messages",
                code="context_length_exceeded",
            )

    def health(self) -> dict:
        with self._cond:
            return {
                "busy": bool(self._running),
                "running": len(self._running),
                "parallel": self.parallel,
                "waiting": len(self._waiting),
                "max_queue": self.max_queue,
                **self.stats,
            }

    def stop_all(self) -> None:
        """Refuse new requests and stop the running and waiting ones (the server is shutting down)."""
        with self._cond:
            self._stopping = True
            tickets = [*self._waiting, *self._running]
            self._waiting.clear()
            self._cond.notify_all()
        for t in tickets:
            t.stop()
            t.post(Failed(APIError(503, "the server is shutting down", code="shutting_down")))

    def close(self) -> None:
        """Stop, wait for the lanes (at most the token each is on) and free the models."""
        self.stop_all()
        for t in self._threads:
            t.join()
        for backend in {id(b): b for b in self.roles}.values():
            backend.close()

    # -- internals ---------------------------------------------------------
    def _withdraw(self, ticket: Ticket) -> None:
        with self._cond:  # a client that leaves while waiting frees its place at once
            if ticket in self._waiting:
                self._waiting.remove(ticket)
                self._count("cancelled")

    def _count(self, key: str) -> None:
        with self._cond:  # the worker thread and the event loop both count
            self.stats[key] += 1

    def _retry_after(self) -> int:
        per = sum(self._durations) / len(self._durations) if self._durations else 5.0
        return max(1, math.ceil(per * (len(self._waiting) + 1) / self.parallel))

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                ticket = self._waiting.popleft()
                self._running.add(ticket)
            try:
                self._run(ticket)
            finally:
                with self._cond:
                    self._running.discard(ticket)

    def _grounding(self, question: str):
        """The reasoner's context and the critic's evidence source from the store (none without one)."""
        if self.store is None:
            return None, None
        from ..rag.evidence import Evidence, chunk_dict

        context = [chunk_dict(h) for h in self.store.search(question, k=self.retrieval.rag_k)]
        return context, Evidence(self.store, k=self.retrieval.evidence_k)

    def _run(self, ticket: Ticket) -> None:
        job, t0 = ticket.job, time.perf_counter()
        try:
            context, evidence = self._grounding(job.question)
            engine = Engine(*self.roles, sampling=job.sampling, recursion=job.recursion, fmt=self.fmt, context=context, evidence=evidence, on_event=ticket.emit)
            transcript = engine.run(job.question)
        except Cancelled:
            self._count("cancelled")
            after = time.perf_counter() - (ticket.cancelled_at or t0)
            self.log(f"request stopped {after * 1000:.0f} ms after it was cancelled ({time.perf_counter() - t0:.1f} s in)")
            ticket.post(Failed(APIError(503, "the request was cancelled", code="cancelled")))
            return
        except PreflexorError as err:
            self._count("failed")
            self.log(f"request failed: {err.message}")
            ticket.post(Failed(from_library(err)))
            return
        except Exception as err:  # a bug: keep serving, log the traceback, tell the client without one
            self._count("failed")
            self.log("request failed with an unexpected error:\n" + traceback.format_exc())
            ticket.post(Failed(APIError(500, f"internal error ({type(err).__name__}); see the server log", code="internal_error")))
            return
        seconds = time.perf_counter() - t0
        self._durations.append(seconds)
        self._count("served")
        rate = transcript.completion_tokens / seconds if seconds else 0.0
        self.log(
            f"answered: {len(transcript.rounds)} round(s){' + integration' if transcript.integrated else ''} · "
            f"{transcript.prompt_tokens} prompt + {transcript.completion_tokens} completion tokens · {seconds:.1f} s · {rate:.1f} tok/s"
        )
        ticket.post(Done(transcript))
