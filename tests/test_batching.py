"""Batched decoding (``LoadOptions.parallel``): concurrent calls share each llama_decode and get the tokens they get alone.

On a tiny random Llama GGUF (f32, built here), against the same model loaded without batching.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from convert_fixtures import build_tiny

from preflexor_local.backends import GenerationRequest
from preflexor_local.backends.llamacpp import LlamaCppBackend
from preflexor_local.config import LoadOptions, Sampling

GREEDY = Sampling(temperature=0, max_tokens=16, seed=0, stop_repeats=False)
SAMPLED = Sampling(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0, dry_multiplier=0.0, max_tokens=16, seed=5, stop_repeats=False)
QUESTIONS = ["Why is nacre tough?", "What is bone made of?", "How does silk stretch?", "Why does wood float?", "What makes enamel hard?"]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf

    root = tmp_path_factory.mktemp("batching")
    return Path(convert_to_gguf(build_tiny(root / "llama", arch="llama"), root / "llama.gguf", "f32", quiet=True).output)


def requests() -> list[GenerationRequest]:
    reqs = [GenerationRequest(messages=[{"role": "user", "content": q}], sampling=GREEDY) for q in QUESTIONS]
    reqs.append(GenerationRequest(messages=[{"role": "user", "content": QUESTIONS[0]}], sampling=SAMPLED))
    return reqs


def concurrently(backend, reqs, barrier_timeout: float = 60, together: bool = False) -> list[str]:
    """Each request in its own thread; ``together``: the decode thread starts only once all of them are waiting."""
    out: list[str | BaseException] = [""] * len(reqs)
    start = threading.Barrier(len(reqs), timeout=barrier_timeout)
    dec = backend.batcher
    if together:
        dec.lock.acquire()

    def one(i):
        try:
            start.wait()
            out[i] = backend.generate(reqs[i]).text
        except BaseException as err:
            out[i] = err

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    if together:
        for _ in range(600):
            if len(dec._new) + len(dec._running) == len(reqs):
                break
            threading.Event().wait(0.01)
        dec.lock.release()
    for t in threads:
        t.join(120)
    for r in out:
        if isinstance(r, BaseException):
            raise r
    return out


def test_concurrent_calls_are_batched_and_give_the_tokens_they_give_alone(tiny_gguf):
    alone = LlamaCppBackend(tiny_gguf, LoadOptions(threads=1))
    expected = []
    for req in requests():
        alone.clear_cache()
        expected.append(alone.generate(req).text)
    alone.close()
    batched = LlamaCppBackend(tiny_gguf, LoadOptions(threads=1, parallel=3))
    try:
        assert batched.context_length == alone.context_length  # each call keeps the whole window
        got = concurrently(batched, requests())
        assert got == expected
        dec = batched.batcher
        assert dec.steps and dec.batched_tokens / dec.steps > 1.5  # decode steps carried several calls' tokens
        assert not batched.slots.busy
        again = concurrently(batched, requests())  # now from the cached prefixes
        assert again == expected
    finally:
        batched.close()


@pytest.mark.slow
def test_calls_whose_prompts_do_not_fit_one_batch_together(tiny_gguf):
    """Three fresh prompts of ~250 tokens, all in the first step, against a 512-token batch: one call waits for room.

    Before the fix, the next call's planning dropped that empty slot and handed the same sequence to
    another call, and the decode thread died on the missing slot, leaving every caller waiting.
    """
    from tiny_model import CORPUS

    words = " ".join(CORPUS).split()
    reqs = [GenerationRequest(messages=[{"role": "user", "content": " ".join(words[i * 7 :] + words)[:1100] + " Why?"}], sampling=GREEDY) for i in range(3)]
    alone = LlamaCppBackend(tiny_gguf, LoadOptions(threads=1))
    expected = []
    for req in reqs:
        alone.clear_cache()
        expected.append(alone.generate(req).text)
    lengths = [len(alone.encode(alone.render(r))) for r in reqs]
    alone.close()
    assert all(200 < n < 512 for n in lengths) and sum(lengths) > 512
    b = LlamaCppBackend(tiny_gguf, LoadOptions(threads=1, parallel=3))
    try:
        assert concurrently(b, reqs, together=True) == expected
        assert len({seq for seq in b.slots.held}) == len(b.slots.held) and not b.slots.busy
    finally:
        b.close()


def test_a_call_that_stops_early_frees_its_slot_and_the_others_finish(tiny_gguf):
    b = LlamaCppBackend(tiny_gguf, LoadOptions(threads=1, parallel=2))
    try:
        long = GenerationRequest(messages=[{"role": "user", "content": QUESTIONS[1]}], sampling=Sampling(temperature=0, max_tokens=40, stop_repeats=False))
        stream = b.stream(long)
        first = next(stream)
        assert isinstance(first, str)
        others = concurrently(b, requests()[:2])
        stream.close()  # the consumer leaves mid-generation
        deadline = threading.Event()
        for _ in range(100):
            if not b.slots.busy and not b.batcher._running:
                break
            deadline.wait(0.05)
        assert not b.slots.busy and not b.batcher._running
        assert all(others)
        alone = b.generate(requests()[0]).text
        assert alone == others[0]
    finally:
        b.close()
