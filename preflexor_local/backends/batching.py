"""Batched decoding for concurrent calls on one llama.cpp model (``serve --parallel N``).

Without it, concurrent requests take turns: each token of each request is one
``llama_decode`` of one token, and a small model on a CPU spends most of that
call reading weights. Here one thread owns the context and, each step, decodes
the next token of *every* running call (plus prompt tokens of calls that are
starting, up to ``n_batch`` in all) in a single ``llama_decode``, then samples
each call's token from its own row of logits with its own sampler chain.

* Calls run in their own threads (the server's lanes) and see an ordinary token
  iterator (``BatchDecoder.generate``); tokens reach them through a queue.
* Each call decodes into one ``KVSlots`` slot, marked busy while it runs so no
  other call takes or drops it; prefix reuse across slots works as without batching.
* A consumer that stops (end of turn, stop string, client gone) closes its iterator;
  the decoder drops the call before its next step. A token sampled but not yet
  consumed is already in the slot, which records it (the cache stays consistent).
* A batch that finds no free KV cells drops idle slots first; if running calls
  alone fill the cache, the newest call in the batch fails with ``GenerationError``
  and the others go on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..errors import GenerationError
from .kv_slots import KVSlots

_END = object()


@dataclass(eq=False)
class _Call:
    ids: list[int]
    sampler: object
    max_new: int
    out: queue.Queue = field(default_factory=queue.Queue)
    seq: int = -1
    pending: list[int] = field(default_factory=list)  # tokens to append to the slot before the next sample
    produced: int = 0
    closed: threading.Event = field(default_factory=threading.Event)


class BatchDecoder:
    """One decode thread over ``slots``; ``generate`` may be called from many threads at once."""

    def __init__(self, slots: KVSlots):
        self.slots = slots
        self.lock = threading.Lock()  # held by the decode thread for a whole step; readers of the slots take it too
        self._wake = threading.Condition()
        self._new: list[_Call] = []
        self._running: list[_Call] = []
        self._stopping = False
        self.steps = 0  # llama_decode calls made
        self.batched_tokens = 0  # tokens decoded in them (the batching shows in batched_tokens / steps)
        self._thread = threading.Thread(target=self._loop, name="llama-batch", daemon=True)
        self._thread.start()

    def generate(self, ids: list[int], sampler, max_new: int) -> Iterator[int]:
        """Like ``KVSlots.generate``: up to ``max_new`` sampled tokens; closing the iterator stops the call."""
        call = _Call(list(ids), sampler, max_new)
        with self._wake:
            if self._stopping:
                raise GenerationError("the model is closing")
            self._new.append(call)
            self._wake.notify()
        try:
            while True:
                item = call.out.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            call.closed.set()
            with self._wake:
                self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()

    # -- decode thread ---------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._new and not self._running:
                    self._wake.wait()
                if self._stopping:
                    for call in self._new + self._running:
                        self._finish(call, GenerationError("the model is closing"))
                    self._new.clear()
                    return
            with self.lock:
                try:
                    self._step()
                except Exception as err:  # a bug must not leave callers waiting forever: fail the running calls, keep serving
                    import traceback

                    traceback.print_exc()
                    for call in list(self._running):
                        self._finish(call, GenerationError(f"batched decoding failed ({type(err).__name__}: {err})"))

    def _step(self) -> None:
        slots = self.slots
        with self._wake:  # every call that arrived by now starts in this step
            self._running += self._new
            self._new.clear()
        for call in [c for c in self._running if c.closed.is_set()]:
            self._finish(call)
        for call in [c for c in self._running if c.seq < 0]:
            try:
                call.seq, reuse = slots._prepare(call.ids)
            except GenerationError as err:
                self._finish(call, err)
                continue
            slots.busy.add(call.seq)
            call.pending = call.ids[reuse:]
            slots.evaluated += len(call.pending)
        # Every call that is generating decodes its one token; calls still reading their prompt share what is left.
        room = slots.n_batch - sum(1 for c in self._running if c.produced)
        parts, owners = [], []
        for call in sorted(self._running, key=lambda c: not c.produced):
            take = call.pending if call.produced else call.pending[: max(0, room)]
            if not take:
                continue
            if not call.produced:
                room -= len(take)
            parts.append((call.seq, take, len(take) == len(call.pending)))
            owners.append(call)
        if not parts:
            return
        while True:
            try:
                where = slots.decode(parts)
                break
            except GenerationError as err:  # running calls alone fill the cache: the newest gives way
                victim = max(range(len(owners)), key=lambda i: self._running.index(owners[i]))
                self._finish(owners.pop(victim), err)
                parts.pop(victim)
                if not parts:
                    return
        self.steps += 1
        self.batched_tokens += sum(len(t) for _, t, _ in parts)
        for call, (_, took, _), idx in zip(owners, parts, where):
            del call.pending[: len(took)]
            if idx < 0:
                continue
            token = call.sampler.sample(slots.llm._ctx, idx)
            call.produced += 1
            call.out.put(token)
            if call.produced >= call.max_new:
                self._finish(call)
            else:
                call.pending = [token]

    def _finish(self, call: _Call, error: BaseException | None = None) -> None:
        if call in self._running:
            self._running.remove(call)
        if call.seq >= 0:
            self.slots.busy.discard(call.seq)
            if error is not None:
                self.slots._drop(call.seq)
        call.seq = -2
        call.sampler.close()
        call.out.put(error if error is not None else _END)
