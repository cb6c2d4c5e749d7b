"""The transformers backend on a tiny random Llama: exact, prefill-honouring, cache-reusing generation."""

import pytest

from preflexor_local.backends import GenerationRequest, load
from preflexor_local.config import LoadOptions, Sampling
from preflexor_local.errors import ContextOverflowError

GREEDY = Sampling(temperature=0, repeat_penalty=1.0, dry_multiplier=0.0, max_tokens=12)
MSGS = [{"role": "user", "content": "Why is spider silk tough?"}]


@pytest.fixture(scope="module")
def backend(tiny_llama):
    b = load(str(tiny_llama))
    yield b
    b.close()


@pytest.fixture(scope="module")
def reference(tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama), AutoModelForCausalLM.from_pretrained(tiny_llama).eval()


def hf_greedy(reference, prompt, n):
    tok, model = reference
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1] :].tolist()


def test_prefill_continuation_equals_transformers_greedy(backend, reference):
    tok = reference[0]
    req = GenerationRequest(messages=MSGS, prefill="<|thinking|>Spider silk", sampling=GREEDY)
    prompt = backend.render(req)
    assert prompt.endswith("<|assistant|><|thinking|>Spider silk")
    ids = backend.encode(prompt)
    assert tok.convert_tokens_to_ids("<|thinking|>") in ids  # the tag is one special token, not text pieces
    gen = backend.generate(req)
    expected = hf_greedy(reference, prompt, 12)
    eos = backend.eos_ids
    cut = next((i for i, t in enumerate(expected) if t in eos), len(expected))
    assert gen.text == tok.decode(expected[:cut], skip_special_tokens=False)
    assert gen.prompt_tokens == len(ids) and gen.completion_tokens == min(cut + 1, 12)


def test_special_tokens_are_kept_in_text(backend):
    from preflexor_local.backends.base import TextDetokenizer

    d = TextDetokenizer(backend.tokenizer)
    ids = backend.tokenizer("<|thinking|>silk<|/thinking|>", add_special_tokens=False).input_ids
    assert "".join(d.push(i) for i in ids) + d.flush() == "<|thinking|>silk<|/thinking|>"


def test_stop_string_cuts_text_and_is_reported(backend):
    req = GenerationRequest(messages=MSGS, sampling=GREEDY)
    full = backend.generate(req).text
    assert len(full) > 4
    stop = full[2:4]
    cut = backend.generate(GenerationRequest(messages=MSGS, sampling=GREEDY, stop=(stop,)))
    assert cut.finish_reason == "stop" and cut.stop == stop
    assert cut.text == full[: full.index(stop)]


def test_kv_cache_is_reused_for_a_shared_prefix(backend):
    req = GenerationRequest(messages=MSGS, sampling=GREEDY)
    first = backend.generate(req)
    again = backend.generate(req)
    assert again.text == first.text
    assert again.cached_tokens == again.prompt_tokens - 1
    longer = backend.generate(GenerationRequest(messages=MSGS, prefill="<|thinking|>", sampling=GREEDY))
    assert 0 < longer.cached_tokens < longer.prompt_tokens


def test_seeded_sampling_is_reproducible(backend):
    s = Sampling(temperature=0.9, seed=7, max_tokens=10)
    a = backend.generate(GenerationRequest(messages=MSGS, sampling=s)).text
    b = backend.generate(GenerationRequest(messages=MSGS, sampling=s)).text
    assert a == b


def test_prompt_longer_than_context_is_an_error(tiny_llama):
    b = load(str(tiny_llama), LoadOptions(ctx=64))  # the smallest context the settings allow
    long = [{"role": "user", "content": "Spider silk is tough. " * 40}]
    with pytest.raises(ContextOverflowError, match="context window is 64"):
        b.generate(GenerationRequest(messages=long, sampling=GREEDY))


def test_generation_budget_shrinks_to_the_room_left(tiny_llama):
    b = load(str(tiny_llama), LoadOptions(ctx=64))
    msgs = [{"role": "user", "content": "Spider silk is tough. " * 5}]
    gen = b.generate(GenerationRequest(messages=msgs, sampling=Sampling(temperature=0, max_tokens=100, stop_repeats=False)))
    assert gen.prompt_tokens > 20 and gen.prompt_tokens + gen.completion_tokens <= 64


def test_a_restart_stop_ends_generation_at_its_second_occurrence(backend):
    from restarts import check_restart_stop

    sampling = Sampling(temperature=0, repeat_penalty=1.0, dry_multiplier=0.0, max_tokens=40)
    check_restart_stop(backend, GenerationRequest(messages=MSGS, prefill="<|thinking|>", sampling=sampling))  # 40 tokens, no end of turn
