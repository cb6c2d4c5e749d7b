"""The llama.cpp backend and the engine on the real Gemma 3 270M GGUF (a base model)."""

import pytest
from convert_fixtures import gguf_with_arch

from preflexor_local.backends import GenerationRequest, load
from preflexor_local.config import LoadOptions, Recursion, Sampling
from preflexor_local.errors import InvalidModelError
from preflexor_local.reasoning.engine import Engine

GREEDY = Sampling(temperature=0, max_tokens=10, seed=0)


@pytest.fixture(scope="module")
def gemma(gemma_gguf):
    b = load(str(gemma_gguf), LoadOptions(ctx=2048))
    yield b
    b.close()


def test_base_model_gets_plain_format_and_metadata(gemma):
    d = gemma.describe()
    assert d["backend"] == "llamacpp" and d["architecture"] == "gemma3" and d["template"] == "plain"
    assert d["context_length"] == 2048


def test_tags_are_plain_text_for_this_tokenizer_and_survive_decoding(gemma):
    ids = gemma.encode("<|thinking|>")
    assert ids[0] == gemma.llm.token_bos()  # a base-model prompt gets BOS from the tokenizer
    ids = ids[1:]
    assert len(ids) > 1  # not in Gemma's vocabulary: plain text pieces
    from preflexor_local.backends.llamacpp import _Detok

    d = _Detok(gemma.vocab)
    assert "".join(d.push(i) for i in ids) + d.flush() == "<|thinking|>"


def test_generation_is_deterministic_and_reuses_the_cache(gemma):
    req = GenerationRequest(messages=[{"role": "user", "content": "Name a tough natural material."}], sampling=GREEDY)
    a = gemma.generate(req)
    b = gemma.generate(req)
    assert a.text == b.text and a.completion_tokens > 0
    assert b.cached_tokens == b.prompt_tokens - 1
    assert b.ttft < a.ttft + 1.0


@pytest.mark.slow
def test_two_rounds_on_the_default_style_model(gemma):
    events = []
    t = Engine(gemma, sampling=GREEDY, recursion=Recursion(rounds=2), on_event=events.append).run("Why is spider silk so tough?")
    assert len(t.rounds) == 2 and t.integration is not None
    calls = t.rounds[0].calls
    assert [c.channel for c in calls] == ["thinking", "answer", "critique", "rewrite"]
    assert all(c.completion_tokens > 0 for c in t.calls)
    # the answer phase continues the thinking phase's prompt: llama.cpp re-evaluates almost nothing
    assert calls[1].cached_tokens >= calls[0].prompt_tokens - 1
    assert t.final_answer.strip()
    assert any(e.kind == "text" and e.channel == "thinking" for e in events)


def test_bad_files_are_refused_by_name(tmp_path, gemma_gguf):
    fake = tmp_path / "fake.gguf"
    fake.write_text("not a model")
    with pytest.raises(InvalidModelError, match="not a GGUF file"):
        load(str(fake))
    cut = tmp_path / "cut.gguf"
    with open(gemma_gguf, "rb") as src:
        cut.write_bytes(src.read(5_000_000))
    with pytest.raises(InvalidModelError, match="truncated"):
        load(str(cut))


def test_unknown_architecture_is_named(tmp_path):
    path = gguf_with_arch(tmp_path / "odd.gguf", "frobnicator")
    with pytest.raises(InvalidModelError, match="frobnicator"):
        load(str(path))
