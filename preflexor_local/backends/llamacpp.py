"""llama.cpp backend (llama-cpp-python) for GGUF files, on CPU, Metal or CUDA.

The prompt is rendered by the project (``render_prompt``) and tokenised with
special tokens parsed, so a pre-filled thinking section reaches the model
exactly as written. Generation decodes into one of several cached sequences
(``KVSlots``) of a single context: the reasoner's, the critic's and the
integrator's prompts each keep their prefix, and a call evaluates only the
prompt tokens that no cached sequence already holds at the same positions.
Sampling is llama-cpp-python's own chain (the one ``Llama.generate`` builds), with
llama.cpp's DRY sampler added when it is on.
"""

from __future__ import annotations

import codecs
import ctypes
import dataclasses
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..config import LoadOptions, Sampling
from ..errors import InvalidModelError, ModelNotFoundError, UsageError
from ..gguf_meta import GGUFInfo, is_gguf, read_gguf
from ..models import ModelSpec, default_model_path
from ..prompt import probe_template
from . import BackendEntry
from .base import Detokenizer, LocalBackend, context_window, needs_prefix
from .batching import BatchDecoder
from .dry import DRY_BREAKERS
from .kv_slots import DEFAULT_SLOTS, KVSlots
from .llamacpp_load import open_llama


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
        n_ctx = context_window(info.arch_key("context_length"), options.ctx)
        parallel = max(1, options.parallel)
        threads = options.threads or default_threads()
        _install_log_sink()
        _LOG.clear()
        try:
            self.llm = open_llama(
                path,
                n_ctx=n_ctx * parallel,  # one window per concurrent call, in one unified KV buffer
                n_threads=threads,
                n_threads_batch=threads,
                n_gpu_layers=options.gpu_layers,
            )
            self.slots = KVSlots(self.llm, slots * parallel)  # before the adapters: they are set on this context
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
        self.context_length = n_ctx  # per call; the cache has parallel x n_ctx cells
        self.batcher = BatchDecoder(self.slots) if parallel > 1 else None
        self._sampler_lock = threading.Lock()  # llama-cpp-python keeps the seed on the Llama object
        # DRY samplers by (multiplier, base, allowed length), cloned per call: building one scans the whole
        # vocabulary for the breakers (~0.1 s on Gemma's 262k tokens); a clone copies the scan.
        self._dry_protos: dict[tuple, object] = {}
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
        self.template = probe_template(
            override,
            trained or meta.get("tokenizer.chat_template"),
            info.architecture,
            names=(meta.get("general.name"), meta.get("general.finetune"), path.name),
            has_token=self._single_token,
            bos_token=self.bos_token,
            eos_token=eos_token,
        )

    @property
    def concurrent(self) -> bool:
        """Loaded with parallel slots: concurrent calls decode together in one batch."""
        return self.batcher is not None

    def _single_token(self, text: str) -> bool:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=True)) == 1

    def encode(self, prompt: str) -> list[int]:
        return self.llm.tokenize(prompt.encode("utf-8"), add_bos=needs_prefix(prompt, self.bos_token, self.add_bos), special=True)

    def cached_prefix(self, ids: list[int]) -> int:
        if self.batcher is None:
            return self.slots.plan(ids)[2]  # the plan token_stream follows: what is reported is what is reused
        with self.batcher.lock:  # the plan at this moment; other calls may change the slots before this one starts
            return self.slots.plan(ids)[2]

    def token_stream(self, ids: list[int], sampling: Sampling, max_new: int, dry_source: Sequence[int] = ()) -> Iterator[int]:
        import random

        with self._sampler_lock:
            self.llm.set_seed(sampling.seed if sampling.seed is not None else random.randrange(2**31))
            sampler = self._sampler(sampling, dry_source)
        if self.batcher is not None:
            return self.batcher.generate(ids, sampler, max_new)
        return self.slots.generate(ids, sampler, max_new)

    def _sampler(self, sampling: Sampling, dry_source: Sequence[int] = ()):
        """The chain llama-cpp-python's ``Llama.generate`` builds, with DRY added after the repeat penalty.

        Repeat penalty over the last 64 generated tokens, DRY (when on) over all of them after ``dry_source``
        (accepted into its history first), then greedy, or top-k,
        typical (off), top-p, min-p, temperature and a draw seeded by ``set_seed``.
        """
        import llama_cpp
        from llama_cpp._internals import LlamaSampler

        chain = LlamaSampler()
        chain.add_penalties(self.llm.n_vocab(), self.llm.last_n_tokens_size, sampling.repeat_penalty, 0.0, 0.0)
        if sampling.dry_multiplier > 0:
            key = (sampling.dry_multiplier, sampling.dry_base, sampling.dry_allowed_length)
            if key not in self._dry_protos:
                breakers = (ctypes.c_char_p * len(DRY_BREAKERS))(*(b.encode() for b in DRY_BREAKERS))
                # The window is the context: a fresh sampler sees only this call's tokens, and this binding
                # reads -1 (documented as "the whole context") as off.
                self._dry_protos[key] = llama_cpp.llama_sampler_init_dry(self.vocab, *key, self.llm.n_ctx(), breakers, len(DRY_BREAKERS))
            dry = llama_cpp.llama_sampler_clone(self._dry_protos[key])
            for token in dry_source:
                llama_cpp.llama_sampler_accept(dry, token)
            llama_cpp.llama_sampler_chain_add(chain.sampler, dry)  # the chain owns the clone
        if sampling.temperature <= 0:
            chain.add_greedy()
        else:
            chain.add_top_k(sampling.top_k)
            chain.add_typical(1.0, 1)
            chain.add_top_p(sampling.top_p, 1)
            chain.add_min_p(sampling.min_p, 1)
            chain.add_temp(sampling.temperature)
            chain.add_dist(self.llm._seed)
        return chain

    def clear_cache(self) -> None:
        """Forget every cached sequence: the next call evaluates its whole prompt."""
        if self.batcher is None:
            self.slots.clear()
            return
        with self.batcher.lock:
            self.slots.clear()

    def is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))

    def detokenizer(self, prompt_ids: list[int]) -> Detokenizer:
        return _Detok(self.vocab)

    def describe(self) -> dict:
        d = {**super().describe(), "path": str(self.path), "architecture": self.info.architecture}
        verdict = getattr(self.llm, "preflexor_verdict", None)
        if verdict is not None and not verdict.extra_bufts:  # the AMX fallback (llamacpp_load), in --json, the transcript and `models`
            d["extra_bufts"] = False
            d["note"] = verdict.note
        if self.adapters:
            d["adapters"] = [{"path": a["path"], "scale": a["scale"]} for a in self.adapters]
        return d

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            if self.batcher is not None:
                self.batcher.close()
            self.slots.close()
            import llama_cpp

            for proto in self._dry_protos.values():
                llama_cpp.llama_sampler_free(proto)
            self._dry_protos.clear()
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
        from ..models import BASE_ALIAS, EMBEDDED, demo_adapter_path

        adapter = demo_adapter_path(spec.text)
        if adapter is not None and not options.adapters:
            options = dataclasses.replace(options, adapters=(str(adapter),))
            backend = LlamaCppBackend(default_model_path(), options, name=EMBEDDED[spec.text][1])
        else:  # --adapter on the default model replaces the demo adapter: the name says the base runs with the user's
            backend = LlamaCppBackend(default_model_path(), options, name=EMBEDDED[BASE_ALIAS][1] + (" + --adapter" if options.adapters else ""))
        backend.embedded = True
        return backend
    return LlamaCppBackend(spec.path, options)
