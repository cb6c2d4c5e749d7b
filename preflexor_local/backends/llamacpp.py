"""llama.cpp backend (llama-cpp-python) for GGUF files, on CPU, Metal or CUDA.

The prompt is rendered by the project (``render_prompt``) and tokenised with
special tokens parsed, so a pre-filled thinking section reaches the model
exactly as written. Generation decodes into one of several cached sequences
(``KVSlots``) of a single context: the reasoner's, the critic's and the
integrator's prompts each keep their prefix, and a call evaluates only the
prompt tokens that no cached sequence already holds at the same positions.
Sampling is llama-cpp-python's own chain (the one ``Llama.generate`` builds).
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from ..config import LoadOptions, Sampling
from ..errors import GenerationError, InvalidModelError, ModelNotFoundError, UsageError
from ..gguf_meta import GGUFInfo, is_gguf, read_gguf
from ..models import BASE_ALIAS, ModelSpec, default_model_path
from ..prompt import choose_template, looks_instruct
from . import BackendEntry
from .base import Detokenizer, LocalBackend

DEFAULT_CTX_CAP = 8192


def _claims(spec: ModelSpec) -> int:
    if spec.kind == "default":
        return 10
    if spec.kind == "file" and (spec.path.suffix.lower() == ".gguf" or is_gguf(spec.path)):
        return 10
    if spec.kind == "file":
        return 1  # any other file: we give the clearest error ("not a GGUF file")
    return 0


ENTRY = BackendEntry(
    name="llamacpp",
    summary="GGUF files through llama.cpp (CPU, Metal, CUDA)",
    claims=_claims,
    loader="preflexor_local.backends.llamacpp:load",
    requires=("llama_cpp",),
    extra="llama",
)


def default_threads() -> int:
    """Usable cores minus one: llama.cpp threads that outnumber free cores spin-wait and stall
    (measured here: 2 threads on 2 cores with one busy gave 0.5 tok/s, 1 thread gave 73 tok/s)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        n = os.cpu_count() or 1
    return max(1, n - 1)


_LOG: list[str] = []


def _install_log_sink() -> None:
    """Keep llama.cpp's C-level log off the terminal; keep errors to explain a failed load."""
    import llama_cpp

    global _log_callback
    if "_log_callback" in globals():
        return

    @llama_cpp.llama_log_callback
    def _log_callback(level, text, user_data):
        line = text.decode("utf-8", errors="replace").strip()
        if os.environ.get("PREFLEXOR_DEBUG") == "1":
            print(line, file=sys.stderr)
        if "error" in line.lower():
            _LOG.append(line.split("error loading model:")[-1].strip())
            del _LOG[:-20]

    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


class _Detok(Detokenizer):
    def __init__(self, vocab):
        self.vocab = vocab
        self.buf = ctypes.create_string_buffer(256)
        self.utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        import llama_cpp

        n = llama_cpp.llama_token_to_piece(self.vocab, token, self.buf, len(self.buf), 0, True)
        if n < 0:  # piece longer than the buffer
            self.buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, self.buf, len(self.buf), 0, True)
        return self.utf8.decode(self.buf.raw[:n])

    def flush(self) -> str:
        return self.utf8.decode(b"", final=True)


DEFAULT_SLOTS = 4  # cached sequences per loaded model: reasoner, critique, rewrite, integrator


def _common(a: list[int], b: list[int], limit: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, at most ``limit``."""
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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
        self.evaluated = 0  # prompt tokens decoded so far (what reuse saved is visible against this)

    def plan(self, ids: list[int]) -> tuple[int, int | None, int]:
        """(slot for a call with prompt ``ids``, slot its prefix comes from, prompt tokens reused); changes nothing."""
        self._verify()
        source, reuse = None, 0
        for seq in sorted(self.held, key=self.used.__getitem__, reverse=True):  # on a tie, the most recent
            n = self._usable(seq, _common(self.held[seq], ids, len(ids) - 1))
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
        """Forget every slot: the next call evaluates its whole prompt."""
        for seq in list(self.held):
            self._drop(seq)

    def close(self) -> None:
        self.batch.close()

    # -- internals ---------------------------------------------------------------
    def _verify(self) -> None:
        """Forget slots whose cells changed behind our back (a memory clear): what is held is what we recorded."""
        import llama_cpp

        for seq in list(self.held):
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
            kept = max((_common(toks, self.held[o], len(toks)) for o in self.held if o != seq), default=0)
            return len(toks) - max(kept, reuse if seq == source else 0)

        if source is not None and lost(source) <= reuse:
            return source
        free = [seq for seq in self.seqs if seq not in self.held]
        if free:
            return free[0]
        shared = [seq for seq in self.held if lost(seq) == 0]
        return min(shared or self.held, key=self.used.__getitem__)

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
        import llama_cpp

        held, b = self.held[seq], self.batch.batch
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start : start + self.n_batch]
            b.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, len(held) + i, 1, 0
                b.seq_id[i][0] = seq
            b.logits[len(chunk) - 1] = start + self.n_batch >= len(tokens)
            # 1: no free cells for the batch (the memory is as it was): give up the least recently used other slot
            while (rc := llama_cpp.llama_decode(self.ctx, b)) == 1 and self._evict(keep=seq):
                pass
            if rc != 0:
                self._drop(seq)
                raise GenerationError(
                    f"llama.cpp could not decode a batch of {len(chunk)} tokens (code {rc})",
                    hint="the context window is full or the device ran out of memory; lower --ctx or --max-tokens",
                )
            held.extend(chunk)

    def _evict(self, keep: int) -> bool:
        others = [seq for seq in self.held if seq != keep]
        if not others:
            return False
        self._drop(min(others, key=self.used.__getitem__))
        return True

    def _drop(self, seq: int) -> None:
        import llama_cpp

        llama_cpp.llama_memory_seq_rm(self.mem, seq, -1, -1)  # removing a whole sequence never fails
        self.held.pop(seq, None)
        self.used.pop(seq, None)


class LlamaCppBackend(LocalBackend):
    kind = "llamacpp"

    def __init__(self, path, options: LoadOptions, name: str | None = None, slots: int = DEFAULT_SLOTS):
        import llama_cpp

        if not 1 <= slots < llama_cpp.llama_max_parallel_sequences():
            raise UsageError(f"KV slots must be 1..{llama_cpp.llama_max_parallel_sequences() - 1}, not {slots}")
        self.path = path
        info = read_gguf(path)  # clear errors for non-GGUF and truncated files, before llama.cpp sees them
        super().__init__(name or info.get("general.name") or path.name)
        self.info = info
        trained_ctx = int(info.arch_key("context_length", DEFAULT_CTX_CAP))
        n_ctx = options.ctx or min(trained_ctx, DEFAULT_CTX_CAP)
        threads = options.threads or default_threads()
        _install_log_sink()
        _LOG.clear()
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=options.gpu_layers,
                verbose=False,
            )
            self.slots = KVSlots(self.llm, slots)  # before the adapters: they are set on this context
        except ValueError:
            if getattr(self, "llm", None) is not None:
                self.llm.close()
            arch = info.architecture or "unknown"
            reason = next((line for line in reversed(_LOG) if line), "no reason given")
            raise InvalidModelError(
                f"llama.cpp could not load {path} (architecture {arch!r}): {reason}",
                hint="the architecture may be newer than this llama-cpp-python; upgrade it, or use the HF checkpoint with the transformers backend",
            ) from None
        self.adapters = _apply_adapters(self.llm, info, options.adapters) if options.adapters else []
        self.context_length = self.llm.n_ctx()
        self.vocab = self.llm._model.vocab
        meta = self.llm.metadata
        bos_id, eos_id = self.llm.token_bos(), self.llm.token_eos()
        piece = lambda t: self.llm._model.token_get_text(t) if t >= 0 else ""  # noqa: E731
        self.bos_token, eos_token = piece(bos_id), piece(eos_id)
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "true") != "false"
        # An adapter that records its training chat format wins over the base's (a base model has none):
        # by name when it is a known one (its stop strings come with it), else its Jinja source.
        named = next((a["template_name"] for a in self.adapters if a.get("template_name")), None)
        trained = next((a["chat_template"] for a in self.adapters if a.get("chat_template")), None)
        override = options.chat_template if options.chat_template not in (None, "auto") else named
        self.template = choose_template(
            override,
            trained or meta.get("tokenizer.chat_template"),
            info.architecture,
            instruct=looks_instruct(meta.get("general.name"), meta.get("general.finetune"), path.name),
            bos_token=self.bos_token,
            eos_token=eos_token,
            vocab_has=frozenset(t for t in ("<|start_header_id|>", "<|im_start|>") if self._single_token(t)),
        )

    def _single_token(self, text: str) -> bool:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=True)) == 1

    def encode(self, prompt: str) -> list[int]:
        starts_with_bos = bool(self.bos_token) and prompt.startswith(self.bos_token)
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=self.add_bos and not starts_with_bos, special=True)

    def cached_prefix(self, ids: list[int]) -> int:
        return self.slots.plan(ids)[2]  # the plan token_stream follows: what is reported is what is reused

    def token_stream(self, ids: list[int], sampling: Sampling, max_new: int) -> Iterator[int]:
        import random

        self.llm.set_seed(sampling.seed if sampling.seed is not None else random.randrange(2**31))
        greedy = sampling.temperature <= 0
        # llama-cpp-python's own chain, as Llama.generate builds it: repeat penalty over the last 64 generated
        # tokens, then greedy, or top-k, typical (off), top-p, min-p, temperature and a seeded draw.
        sampler = self.llm._init_sampler(
            temp=0.0 if greedy else sampling.temperature,
            top_k=1 if greedy else sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p,
            repeat_penalty=sampling.repeat_penalty,
        )
        return self.slots.generate(ids, sampler, max_new)

    def clear_cache(self) -> None:
        """Forget every cached sequence: the next call evaluates its whole prompt."""
        self.slots.clear()

    def is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer:
        return _Detok(self.vocab)

    def describe(self) -> dict:
        d = {**super().describe(), "path": str(self.path), "architecture": self.info.architecture}
        if self.adapters:
            d["adapters"] = [{"path": a["path"], "scale": a["scale"]} for a in self.adapters]
        return d

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            self.slots.close()
            llm.close()  # explicit: Llama.__del__ at interpreter exit can print a TypeError
            self.llm = None


def parse_adapter(text: str) -> tuple[Path, float]:
    """``FILE`` or ``FILE:SCALE`` -> (path, scale); the file must exist."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            path, scale = head, float(tail)
        except ValueError:
            path = text  # a colon that is part of the path
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelNotFoundError(f"adapter file not found: {path}", hint="pass --adapter FILE.gguf or FILE.gguf:SCALE (a LoRA GGUF from `convert lora-gguf`)")
    return p, scale


def _apply_adapters(llm, base: GGUFInfo, texts: tuple[str, ...]) -> list[dict]:
    """Load LoRA GGUFs and set them, with their scales, on the context (applied at run time, not merged).

    llama-cpp-python's own ``lora_path`` takes one adapter and turns mmap off; the C API takes several and needs neither.
    """
    import llama_cpp

    loaded = []
    for text in texts:
        path, scale = parse_adapter(text)
        info = read_gguf(path)
        if info.get("general.type") != "adapter" or info.get("adapter.type") != "lora":
            raise InvalidModelError(
                f"{path} is not a LoRA adapter GGUF (general.type {info.get('general.type')!r})",
                hint="write one with `preflexor-local convert lora-gguf ADAPTER --base BASE.gguf -o adapter.gguf`",
            )
        if info.architecture != base.architecture:
            raise InvalidModelError(
                f"adapter {path.name} is for {info.architecture!r}, the model is {base.architecture!r}", hint="pass the base model the adapter was trained on"
            )
        _LOG.clear()
        handle = llama_cpp.llama_adapter_lora_init(llm._model.model, str(path).encode("utf-8"))
        if not handle:
            reason = next((line for line in reversed(_LOG) if line), "no reason given")
            raise InvalidModelError(f"llama.cpp could not apply adapter {path}: {reason}", hint="the adapter must come from this base model")
        llm._stack.callback(llama_cpp.llama_adapter_lora_free, handle)  # freed with the model
        loaded.append(
            {
                "path": str(path),
                "scale": scale,
                "handle": handle,
                "chat_template": info.get("tokenizer.chat_template"),
                "template_name": info.get("preflexor.chat_template"),
            }
        )
    arr = (llama_cpp.llama_adapter_lora_p_ctypes * len(loaded))(*[a["handle"] for a in loaded])
    scales = (ctypes.c_float * len(loaded))(*[a["scale"] for a in loaded])
    if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, arr, len(loaded), scales):
        raise InvalidModelError("llama.cpp refused to set the LoRA adapters on the context")
    return loaded


def load(spec: ModelSpec, options: LoadOptions) -> LlamaCppBackend:
    if spec.kind == "default":
        from ..models import demo_adapter_path

        adapter = demo_adapter_path() if spec.text != BASE_ALIAS else None
        if adapter is not None and not options.adapters:
            options = dataclasses.replace(options, adapters=(str(adapter),))
            return LlamaCppBackend(default_model_path(), options, name="gemma3-270m + preflexor demo adapter (default)")
        return LlamaCppBackend(default_model_path(), options, name="gemma3-270m (base)")
    return LlamaCppBackend(spec.path, options)
