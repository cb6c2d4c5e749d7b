"""convert merge: the merged checkpoint computes what PEFT's adapter model computes (LoRA, DoRA, resized vocab)."""

from __future__ import annotations

from pathlib import Path

import pytest
from convert_cli import run_cli
from convert_fixtures import build_tiny

from preflexor_local.errors import InvalidModelError


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_tiny(tmp_path_factory.mktemp("merge-base"), arch="llama")


def _make_adapter(base_dir: Path, out: Path, *, dora=False, new_tokens=False, seed=0):
    """Train-like adapter: random non-zero LoRA weights (init_lora_weights=False); optionally with added tokens."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(base_dir)
    kw = {}
    if new_tokens:
        from preflexor_local.convert.tokens import add_thinking_tokens
        from preflexor_local.format import ThinkingFormat

        add_thinking_tokens(model, tok, ThinkingFormat.preset("think"))
        kw["modules_to_save"] = ["embed_tokens", "lm_head"]
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], use_dora=dora, init_lora_weights=False, **kw)
    pm = get_peft_model(model, cfg)
    if new_tokens:
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "modules_to_save" in n:
                    p.add_(torch.randn_like(p) * 0.05)
    pm.save_pretrained(out)
    tok.save_pretrained(out)
    pm.eval()
    ids = torch.tensor([tok.encode("Spider silk <think> is tough", add_special_tokens=True)])
    with torch.no_grad():
        ref = pm(ids).logits
    return ids, ref


@pytest.mark.parametrize("dora,new_tokens", [(False, False), (True, False), (False, True)])
def test_merge_equals_peft_forward(base, tmp_path, dora, new_tokens):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from preflexor_local.convert.merge import merge_adapter

    ids, ref = _make_adapter(base, tmp_path / "adapter", dora=dora, new_tokens=new_tokens)
    res = merge_adapter(base, tmp_path / "adapter", tmp_path / "merged", quiet=True)
    assert res.kind == ("dora" if dora else "lora") and res.resized == new_tokens
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    assert not any("lora" in k for k in merged.state_dict())
    with torch.no_grad():
        got = merged(ids).logits
    assert torch.allclose(got, ref, atol=1e-4), (got - ref).abs().max()
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    if not new_tokens:
        with torch.no_grad():
            assert not torch.allclose(plain(ids).logits, ref, atol=1e-3)  # the adapter did change something
    else:
        tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
        assert len(tok.encode("<think>", add_special_tokens=False)) == 1


def test_merge_then_gguf(base, tmp_path):
    """A merged adapter converts to GGUF and matches transformers (the 'done when' path, tiny)."""
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf
    from preflexor_local.convert.merge import merge_adapter
    from preflexor_local.convert.verify import verify

    _make_adapter(base, tmp_path / "adapter", seed=3)
    merge_adapter(base, tmp_path / "adapter", tmp_path / "merged", quiet=True)
    out = convert_to_gguf(tmp_path / "merged", tmp_path / "m.gguf", "f16", quiet=True).output
    report = verify(tmp_path / "merged", out, n_tokens=8)
    assert report.ok, report.table()


def test_merge_bad_inputs(base, tmp_path):
    from preflexor_local.convert.merge import merge_adapter

    # not an adapter
    with pytest.raises(InvalidModelError, match="no adapter_config.json"):
        merge_adapter(base, base, tmp_path / "o")
    # an adapter for another base (different hidden size)
    other = build_tiny(tmp_path / "other", arch="llama", hidden=32)
    _make_adapter(other, tmp_path / "other-adapter")
    with pytest.raises(InvalidModelError, match="does not fit this base"):
        merge_adapter(base, tmp_path / "other-adapter", tmp_path / "o")
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli("convert", "merge", base, tmp_path / "other-adapter", "-o", tmp_path / "o")
    assert code == 1 and "does not fit" in err and "Traceback" not in err
