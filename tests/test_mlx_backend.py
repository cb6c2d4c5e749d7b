"""MLX backend: resolver claims, greedy parity with transformers on the same weights, prefill, cache reuse, errors."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("mlx_lm", reason="MLX is not installed on this platform (pip install 'preflexor-local[mlx]')")

from mlx_fixtures import *  # noqa: E402,F403

from preflexor_local.backends import GenerationRequest, load, resolve  # noqa: E402
from preflexor_local.config import LoadOptions, Sampling  # noqa: E402
from preflexor_local.errors import InvalidModelError, ModelNotFoundError  # noqa: E402
from preflexor_local.models import parse_spec  # noqa: E402

GREEDY = Sampling(temperature=0.0, repeat_penalty=1.0, dry_multiplier=0.0, max_tokens=24)
QUESTION = [{"role": "user", "content": "Why is spider silk tough?"}]


@pytest.fixture(scope="module")
def backend(tiny_mlx):
    b = load(str(tiny_mlx))
    yield b
    b.close()


@pytest.fixture(scope="module")
def hf_model(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    import torch

    eos = set(model.generation_config.eos_token_id)
    out = []
    seq = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):  # plain argmax loop: no generation-config surprises
            nxt = int(model(seq).logits[0, -1].argmax())
            out.append(nxt)
            if nxt in eos:
                break
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
    return out


def mlx_tokens(backend, ids: list[int], n: int) -> list[int]:
    out = []
    stream = backend.token_stream(ids, GREEDY, n)
    for t in stream:
        out.append(t)
        if backend.is_end(t) or len(out) >= n:
            break
    stream.close()
    return out


def test_resolver_prefers_mlx_for_mlx_dirs(tiny_mlx, tiny_mlx_q4, tiny_llama, tmp_path):
    assert resolve(parse_spec(str(tiny_mlx))).name == "mlx"
    assert resolve(parse_spec(str(tiny_mlx_q4))).name == "mlx"
    # A plain HF checkpoint stays with transformers on Linux (MLX only bids low there).
    assert resolve(parse_spec(str(tiny_llama))).name != "mlx"
    # An HF-style config with an mlx quantization block is MLX even without safetensors metadata.
    d = tmp_path / "q"
    shutil.copytree(tiny_mlx, d)
    cfg = json.loads((d / "config.json").read_text())
    assert "quantization" not in cfg
    from preflexor_local.backends.mlx import is_mlx_dir

    assert is_mlx_dir(d) and not is_mlx_dir(tiny_llama)


@pytest.mark.parametrize("prefill", ["", "<|thinking|>", "<|thinking|>silk has beta sheets<|/thinking|>"])
def test_greedy_tokens_match_transformers(backend, hf_model, prefill):
    prompt = backend.render(GenerationRequest(messages=QUESTION, prefill=prefill))
    assert prompt.endswith(prefill)  # the prefill is the last thing the model sees
    ids = backend.encode(prompt)
    want = hf_greedy(hf_model, ids, 24)
    got = mlx_tokens(backend, ids, 24)
    assert got == want
    # And through the public API: the text is the decoded continuation (special tokens kept, EOS cut).
    gen = backend.generate(GenerationRequest(messages=QUESTION, prefill=prefill, sampling=GREEDY))
    text_ids = want[:-1] if backend.is_end(want[-1]) else want
    assert gen.text == backend.hf_tok.decode(text_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert gen.completion_tokens == len(want)


def test_streaming_and_prompt_cache_reuse(tiny_mlx, backend):
    chunks = []
    first = backend.generate(GenerationRequest(messages=QUESTION, prefill="<|thinking|>", sampling=GREEDY), on_text=chunks.append)
    assert "".join(chunks) == first.text and len(chunks) > 1  # real streaming, piece by piece
    # The next round shares the prompt + prefill: only the new part is evaluated, and the result equals a cold start.
    follow = GenerationRequest(messages=QUESTION, prefill="<|thinking|>" + first.text[:10], sampling=GREEDY)
    warm = backend.generate(follow)
    assert warm.cached_tokens >= first.prompt_tokens - 1
    cold_backend = load(str(tiny_mlx))
    cold = cold_backend.generate(follow)
    assert cold.cached_tokens == 0 and cold.text == warm.text
    cold_backend.close()


def test_stop_strings_and_budget(backend):
    gen = backend.generate(GenerationRequest(messages=QUESTION, sampling=GREEDY, max_tokens=3))
    assert gen.completion_tokens <= 3 and gen.finish_reason in ("length", "eos")
    full = backend.generate(GenerationRequest(messages=QUESTION, sampling=GREEDY))
    if len(full.text) > 4:
        stop = full.text[2:4]
        cut = backend.generate(GenerationRequest(messages=QUESTION, sampling=GREEDY, stop=(stop,)))
        assert cut.finish_reason == "stop" and stop not in cut.text and full.text.startswith(cut.text)


def test_describe_and_context(backend, tiny_mlx_q4):
    d = backend.describe()
    assert d["backend"] == "mlx" and d["architecture"] == "llama" and d["context_length"] == 512
    q = load(str(tiny_mlx_q4), LoadOptions(ctx=128))
    assert q.describe()["quantization"] == "4-bit affine" and q.context_length == 128
    q.close()


def test_bad_inputs_are_clear_errors(tmp_path, tiny_mlx):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"model_type": "llama", "quantization": {"bits": 4, "group_size": 64}}))
    with pytest.raises(InvalidModelError):
        load(str(empty), LoadOptions(backend="mlx"))
    adapter = tmp_path / "orphan-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"model": str(tmp_path / "gone"), "fine_tune_type": "lora"}))
    (adapter / "adapters.safetensors").write_bytes(b"")
    assert resolve(parse_spec(str(adapter))).name == "mlx"
    with pytest.raises(ModelNotFoundError, match="base model"):
        load(str(adapter))
    unknown = tmp_path / "unknown-arch"
    shutil.copytree(tiny_mlx, unknown)
    cfg = json.loads((unknown / "config.json").read_text())
    cfg["model_type"] = "no_such_arch"
    (unknown / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InvalidModelError, match="no_such_arch"):
        load(str(unknown))
