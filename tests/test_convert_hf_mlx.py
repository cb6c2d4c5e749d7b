"""GGUF -> HF (dequantised, trainable) and HF -> MLX: ids, tags, template and outputs survive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from convert_cli import run_cli
from convert_fixtures import build_tiny

from preflexor_local.errors import InvalidModelError, ModelNotFoundError, UsageError
from preflexor_local.format import ThinkingFormat


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("hf-mlx") / "llama", arch="llama")


def test_gguf_to_hf_round_trip(llama, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from preflexor_local.convert.gguf_to_hf import gguf_to_hf
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf
    from preflexor_local.convert.verify import TRICKY

    gg = convert_to_gguf(llama, tmp_path / "m.gguf", "f32", quiet=True).output
    res = gguf_to_hf(gg, tmp_path / "back", quiet=True)
    a_tok, b_tok = AutoTokenizer.from_pretrained(llama), AutoTokenizer.from_pretrained(tmp_path / "back")
    for s in [*TRICKY, "x <|thinking|> y <|/reflect|>"]:
        assert a_tok.encode(s) == b_tok.encode(s), s
    for tag in ThinkingFormat().tags:
        i = b_tok.convert_tokens_to_ids(tag)
        assert b_tok.added_tokens_decoder[i].special and a_tok.convert_tokens_to_ids(tag) == i
    assert b_tok.chat_template == a_tok.chat_template and res.chat_template
    assert a_tok.convert_tokens_to_ids("<|end|>") in res.eos_token_id and a_tok.eos_token_id in res.eos_token_id
    a = AutoModelForCausalLM.from_pretrained(llama, dtype=torch.float32).eval()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
    ids = torch.tensor([a_tok.encode("Spider silk <|thinking|> is tough")])
    with torch.no_grad():
        assert torch.allclose(a(ids).logits, b(ids).logits, atol=1e-5)
    # trainable: gradients flow through the saved checkpoint
    b.train()
    b(ids, labels=ids).loss.backward()
    assert b.get_input_embeddings().weight.grad is not None


def test_gguf_to_hf_bad_inputs(llama, tmp_path):
    from preflexor_local.convert.gguf_to_hf import gguf_to_hf
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf

    with pytest.raises(ModelNotFoundError):
        gguf_to_hf(tmp_path / "none.gguf", tmp_path / "o")
    (tmp_path / "fake.gguf").write_bytes(b"NOTAGGUF" * 10)
    with pytest.raises(InvalidModelError, match="bad magic"):
        gguf_to_hf(tmp_path / "fake.gguf", tmp_path / "o")
    gg = Path(convert_to_gguf(llama, tmp_path / "m.gguf", "f32", quiet=True).output)
    (tmp_path / "trunc.gguf").write_bytes(gg.read_bytes()[: gg.stat().st_size // 3])
    with pytest.raises(InvalidModelError):
        gguf_to_hf(tmp_path / "trunc.gguf", tmp_path / "o")
    (tmp_path / "exists").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        gguf_to_hf(gg, tmp_path / "exists")


def test_mlx_float_and_quantised(llama, tmp_path):
    from mlx_lm import generate, load

    from preflexor_local.convert.hf_to_mlx import convert_to_mlx
    from preflexor_local.convert.verify import verify

    res = convert_to_mlx(llama, tmp_path / "mlx", dtype="float32", quiet=True)
    assert all(isinstance(i, int) for i in res.tag_ids.values()) and res.chat_template
    report = verify(llama, None, tmp_path / "mlx", n_tokens=8)
    assert report.ok, report.table()
    code, stdout, err = run_cli("convert", "mlx", llama, "-q", "--q-bits", "4", "-o", tmp_path / "mlx-q4", "--json")
    assert code == 0, err
    out = json.loads(stdout)
    assert out["quantized"] and out["bits"] == 4
    model, tok = load(str(tmp_path / "mlx-q4"))  # loads in mlx-lm and generates
    assert isinstance(generate(model, tok, prompt="Spider silk", max_tokens=4), str)
    assert tok.encode("<|thinking|>", add_special_tokens=False) == [res.tag_ids["<|thinking|>"]]
    with pytest.raises(UsageError, match="multiple of"):
        convert_to_mlx(llama, tmp_path / "bad", quantize=True, q_group_size=128)
