"""convert/tokens.py: the tags become single special tokens; new embedding rows are the mean of the old ones."""

from __future__ import annotations

import json

import pytest
from convert_cli import run_cli
from convert_fixtures import build_tiny

from preflexor_local.errors import InvalidModelError, ModelNotFoundError, UsageError
from preflexor_local.format import ThinkingFormat


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("plain"), tags=False)


def _load(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("tied", [False, True])
def test_add_thinking_tokens_in_memory(tmp_path, tied):
    import torch

    from preflexor_local.convert.tokens import add_thinking_tokens

    src = build_tiny(tmp_path / "m", tags=False, tied=tied)
    model, tok = _load(src)
    fmt = ThinkingFormat()
    assert len(tok.encode(fmt.think_start, add_special_tokens=False)) > 1
    old_in = model.get_input_embeddings().weight.detach().clone()
    old_out = model.get_output_embeddings().weight.detach().clone()
    n_old = old_in.shape[0]
    ids = add_thinking_tokens(model, tok, fmt)
    assert ids == list(range(n_old, n_old + 4))
    for tag, i in zip(fmt.tags, ids):
        assert tok.encode(f"x {tag} y", add_special_tokens=False).count(i) == 1
        assert tag in tok.all_special_tokens
    w_in = model.get_input_embeddings().weight
    w_out = model.get_output_embeddings().weight
    assert w_in.shape[0] % 64 == 0 and w_in.shape[0] >= len(tok)
    assert torch.equal(w_in[:n_old], old_in)  # old rows untouched
    assert torch.allclose(w_in[n_old:], old_in.mean(0).expand(w_in.shape[0] - n_old, -1), atol=1e-6)
    assert torch.allclose(w_out[n_old:], old_out.mean(0).expand(w_out.shape[0] - n_old, -1), atol=1e-6)
    assert (w_in.data_ptr() == w_out.data_ptr()) == tied
    assert model.config.vocab_size == w_in.shape[0]
    # idempotent: a second call adds nothing and keeps the ids
    again = add_thinking_tokens(model, tok, fmt)
    assert again == ids and model.get_input_embeddings().weight.shape[0] == w_in.shape[0]


def test_add_tokens_dir_and_cli(plain, tmp_path):
    out = tmp_path / "tags"
    code, stdout, err = run_cli("convert", "add-tokens", plain, "-o", out, "--json")
    assert code == 0, err
    res = json.loads(stdout)
    assert res["added"] == list(ThinkingFormat().tags) and res["vocab_rows"] % 64 == 0
    model, tok = _load(out)
    assert [tok.convert_tokens_to_ids(t) for t in ThinkingFormat().tags] == list(res["ids"].values())
    assert model.get_input_embeddings().weight.shape[0] == res["vocab_rows"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    # existing output without --force: one clear line, exit 2
    code, _, err = run_cli("convert", "add-tokens", plain, "-o", out)
    assert code == 2 and "already exists" in err and "Traceback" not in err


def test_add_tokens_bad_inputs(plain, tmp_path):
    from preflexor_local.convert.tokens import add_thinking_tokens_to_dir

    with pytest.raises(ModelNotFoundError):
        add_thinking_tokens_to_dir(tmp_path / "nope", tmp_path / "o")
    (tmp_path / "notckpt").mkdir()
    (tmp_path / "notckpt" / "readme.txt").write_text("hi")
    with pytest.raises(InvalidModelError, match="no config.json"):
        add_thinking_tokens_to_dir(tmp_path / "notckpt", tmp_path / "o")
    (tmp_path / "exists").mkdir()
    with pytest.raises(UsageError):
        add_thinking_tokens_to_dir(plain, tmp_path / "exists")
