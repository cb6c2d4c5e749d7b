"""Several cached token sequences in one llama.cpp context (``KVSlots``), for the llama.cpp backend.

One set of weights, one KV buffer, one sequence id per cached prompt: the
reasoner's, the critic's and the integrator's prompts each keep their prefix,
and a call evaluates only the prompt tokens no slot already holds.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import GenerationError
from .base import common_prefix, reusable_prefix

DEFAULT_SLOTS = 4  # cached sequences per loaded model: reasoner, critique, rewrite, integrator


class KVSlots:
    """Several cached token sequences in one llama.cpp context: one set of weights, one KV buffer.

    A slot is a llama.cpp sequence id (1..n; sequence 0 stays llama-cpp-python's own, for ``Llama.eval``)
    and the tokens its KV cells hold at positions 0..len-1. The context is created with ``n_seq_max = n + 1``
    and a unified KV buffer: all sequences draw on the same ``n_ctx`` cells, and a prefix copied from one
    sequence to another (``llama_memory_seq_cp``) is the same cells tagged with both ids, not a copy.
    Memory: the KV buffer is the single-sequence one, unchanged (``n_ctx`` cells; Gemma 3 270M: 18 KiB a cell,
    72 MiB at 4096), and so is the compute buffer; each sequence adds a row of logits to the output buffer
    (``n_vocab`` floats: 1 MiB for Gemma's vocabulary). The slots compete for the cells: a batch that finds none
    free drops the least recently used other slot and is retried, so one call can still use the whole window.

    A call with prompt ``ids``:

    1. Source: the slot with the longest common prefix with ``ids`` (the same tokens at the same positions),
       at most ``len(ids) - 1`` (the last prompt token is always evaluated, for fresh logits); none where a
       sliding-window cache no longer holds the ``n_swa`` positions before it (``llama_memory_seq_pos_min``).
    2. Destination, the first that applies: the source itself, when the tokens it would drop beyond the common
       prefix (those no other slot also holds) are no more than the ones reused; a free slot; a slot whose
       every token another slot also holds; the least recently used slot.
    3. The destination keeps (``seq_rm`` of the rest) or receives (``seq_cp``) the common prefix, the remaining
       prompt tokens are decoded into it, and each generated token is appended as it is decoded.

    Models whose memory cannot drop part of a sequence (recurrent, hybrid) reuse a slot only by extending it
    and never copy between slots.

    Reuse changes no token with f32 weights. llama.cpp's CPU kernels are not bit-identical across KV cell indices
    and batch shapes (llama.cpp #4113), and 8-bit activations make that visible on quantized models (Gemma 3 270M
    Q4_K: up to ~0.5 logit between top candidates), so there a near-tie may go either way, as it already could
    with the single-sequence reuse (which re-evaluates the last prompt token alone).
    """

    def __init__(self, llm, n: int = DEFAULT_SLOTS):
        import llama_cpp
        from llama_cpp import _internals

        params = llm.context_params
        params.n_seq_max, params.kv_unified = n + 1, True
        llm._ctx.close()  # llama-cpp-python made a single-sequence context: free its KV before the replacement
        llm._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        model = llm._model.model
        self.llm, self.ctx, self.mem = llm, llm._ctx.ctx, llama_cpp.llama_get_memory(llm._ctx.ctx)
        self.n_swa = max(0, llama_cpp.llama_model_n_swa(model))
        self.partial = not (llama_cpp.llama_model_is_recurrent(model) or llama_cpp.llama_model_is_hybrid(model))
        self.seqs = range(1, n + 1)
        self.n_batch = llm.n_batch
        self.batch = _internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=1, verbose=False)
        self.held: dict[int, list[int]] = {}  # slot -> the tokens its cells hold, at positions 0..len-1
        self.used: dict[int, int] = {}  # slot -> tick of its last call (least recently used goes first)
        self.tick = 0
        self.busy: set[int] = set()  # slots a running call appends to (batched decoding): never a destination, never dropped
        self.evaluated = 0  # prompt tokens decoded so far (what reuse saved is visible against this)

    def plan(self, ids: list[int]) -> tuple[int, int | None, int]:
        """(slot for a call with prompt ``ids``, slot its prefix comes from, prompt tokens reused); changes nothing."""
        self._verify()
        source, reuse = None, 0
        for seq in sorted(self.held, key=self.used.__getitem__, reverse=True):  # on a tie, the most recent
            n = self._usable(seq, reusable_prefix(self.held[seq], ids))
            if n > reuse:
                source, reuse = seq, n
        dest = self._destination(source, reuse)
        if not self.partial and (dest != source or reuse < len(self.held[dest])):
            source, reuse = None, 0
        return dest, source, reuse

    def generate(self, ids: list[int], sampler, max_new: int) -> Iterator[int]:
        """Decode the part of ``ids`` no slot holds, then yield up to ``max_new`` sampled tokens.

        A token is decoded (and held) only when the next one is asked for, so a consumer that stops
        leaves the slot consistent; ``sampler`` is closed at the end.
        """
        try:
            if not ids:
                return
            seq, reuse = self._prepare(ids)
            self._decode(seq, ids[reuse:])
            self.evaluated += len(ids) - reuse
            for n in range(1, max_new + 1):
                token = sampler.sample(self.llm._ctx, -1)
                yield token
                if n < max_new:
                    self._decode(seq, [token])
        finally:
            sampler.close()

    def clear(self) -> None:
        """Forget every slot no call is appending to: the next call evaluates its whole prompt."""
        for seq in list(self.held):
            if seq not in self.busy:
                self._drop(seq)

    def close(self) -> None:
        self.batch.close()

    # -- internals ---------------------------------------------------------------
    def _verify(self) -> None:
        """Forget slots whose cells changed behind our back (a memory clear): what is held is what we recorded."""
        import llama_cpp

        for seq in list(self.held):
            if seq in self.busy:
                continue  # a running call's slot: its prompt may not be decoded yet, and its caller keeps it in step
            if not self.held[seq] or llama_cpp.llama_memory_seq_pos_max(self.mem, seq) != len(self.held[seq]) - 1:
                self._drop(seq)

    def _usable(self, seq: int, n: int) -> int:
        """``n`` if slot ``seq`` still holds what the token at position ``n`` attends to, else 0 (llama-server's rule)."""
        import llama_cpp

        if n and self.n_swa and llama_cpp.llama_memory_seq_pos_min(self.mem, seq) > max(0, n - self.n_swa):
            return 0
        return n

    def _destination(self, source: int | None, reuse: int) -> int:
        def lost(seq: int) -> int:  # tokens only this slot holds, beyond those the call reuses from it
            toks = self.held[seq]
            kept = max((common_prefix(toks, self.held[o]) for o in self.held if o != seq), default=0)
            return len(toks) - max(kept, reuse if seq == source else 0)

        if source is not None and source not in self.busy and lost(source) <= reuse:
            return source
        free = [seq for seq in self.seqs if seq not in self.held and seq not in self.busy]
        if free:
            return free[0]
        idle = [seq for seq in self.held if seq not in self.busy]
        if not idle:
            raise GenerationError(f"all {len(self.seqs)} KV slots are in use", hint="a model serves at most as many calls at once as it has slots")
        shared = [seq for seq in idle if lost(seq) == 0]
        return min(shared or idle, key=self.used.__getitem__)

    def _prepare(self, ids: list[int]) -> tuple[int, int]:
        import llama_cpp

        dest, source, reuse = self.plan(ids)
        if dest == source:
            llama_cpp.llama_memory_seq_rm(self.mem, dest, reuse, -1)
            del self.held[dest][reuse:]
        else:
            self._drop(dest)
            if reuse:
                llama_cpp.llama_memory_seq_cp(self.mem, source, dest, 0, reuse)
            self.held[dest] = list(ids[:reuse])
        self.tick += 1
        self.used[dest] = self.tick
        return dest, reuse

    def _decode(self, seq: int, tokens: list[int]) -> None:
        """Append ``tokens`` to slot ``seq`` in batches of ``n_batch``, with logits for the last one only."""
        for start in range(0, len(tokens), self.n_batch):
            try:
                self.decode([(seq, tokens[start : start + self.n_batch], start + self.n_batch >= len(tokens))])
            except GenerationError:
                self._drop(seq)
                raise

    def decode(self, parts: list[tuple[int, list[int], bool]]) -> list[int]:
        """One ``llama_decode`` appending tokens to one or more slots; at most ``n_batch`` tokens in all.

        ``parts``: (slot, tokens, whether the last token needs logits). Returns, per part, the batch
        index its logits are read at (``-1`` for none). When the cache has no free cells for the batch
        (llama.cpp leaves the memory as it was), idle slots go, least recently used first, and the batch
        is retried; ``GenerationError`` when none is left to drop.
        """
        import llama_cpp

        b, n, where = self.batch.batch, 0, []
        for seq, tokens, logits in parts:
            start = len(self.held[seq])
            for i, token in enumerate(tokens):
                b.token[n], b.pos[n], b.n_seq_id[n], b.logits[n] = token, start + i, 1, 0
                b.seq_id[n][0] = seq
                n += 1
            if logits and tokens:
                b.logits[n - 1] = 1
            where.append(n - 1 if logits and tokens else -1)
        b.n_tokens = n
        keep = {seq for seq, _, _ in parts}
        while (rc := llama_cpp.llama_decode(self.ctx, b)) == 1 and self._evict(keep):
            pass
        if rc != 0:
            raise GenerationError(
                f"llama.cpp could not decode a batch of {n} tokens (code {rc})",
                hint="the context window is full or the device ran out of memory; lower --ctx or --max-tokens",
            )
        for seq, tokens, _ in parts:
            self.held[seq].extend(tokens)
        return where

    def _evict(self, keep: set[int]) -> bool:
        """Drop the least recently used slot that is neither in ``keep`` nor in use by a running call."""
        others = [seq for seq in self.held if seq not in keep and seq not in self.busy]
        if not others:
            return False
        self._drop(min(others, key=self.used.__getitem__))
        return True

    def _drop(self, seq: int) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.mem, seq, -1, -1)  # removing a whole sequence never fails
        self.held.pop(seq, None)
        self.used.pop(seq, None)
