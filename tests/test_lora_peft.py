"""llama.cpp LoRA GGUF -> PEFT: the inverse of lora-gguf, proven by a round trip and by PEFT's own forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
from convert_cli import run_cli
from test_lora_gguf import make_adapter, next_logits_gguf, next_logits_hf

from preflexor_local.errors import InvalidModelError


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_round_trip_gives_the_same_delta(tiny_lora_bases, tmp_path, arch):
    """PEFT -> GGUF -> PEFT: every module's s * B @ A is the one trained (llama's q/k rows permuted back)."""
    from safetensors.numpy import load_file

    from preflexor_local.convert.gguf_lora_to_peft import convert_gguf_lora_to_peft
    from preflexor_local.convert.lora_gguf import convert_lora_to_gguf

    hf, base_gguf = tiny_lora_bases[arch]
    adapter = make_adapter(hf, tmp_path / "adapter", r=4, lora_alpha=8)
    convert_lora_to_gguf(adapter, base_gguf, tmp_path / "a.gguf", "f32", quiet=True)
    res = convert_gguf_lora_to_peft(tmp_path / "a.gguf", hf, tmp_path / "back", quiet=True)
    assert (res.rank, res.alpha, res.modules) == (4, 8.0, 14)
    before, after = load_file(str(adapter / "adapter_model.safetensors")), load_file(str(tmp_path / "back" / "adapter_model.safetensors"))
    assert set(after) == set(before)
    cfg = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    for key in (k for k in before if ".lora_A." in k):
        b_key = key.replace(".lora_A.", ".lora_B.")
        want = before[b_key] @ before[key] * (8 / 4)
        got = after[b_key] @ after[key] * (cfg["lora_alpha"] / cfg["r"])
        assert np.abs(want).max() > 0.1
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_peft_forward_of_the_converted_adapter_is_llamacpps(tiny_lora_bases, tmp_path):
    """transformers + PEFT with the converted folder gives llama.cpp's logits with the GGUF adapter (q8_0 factors)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from preflexor_local.convert.gguf_lora_to_peft import convert_gguf_lora_to_peft
    from preflexor_local.convert.lora_gguf import convert_lora_to_gguf

    hf, base_gguf = tiny_lora_bases["gemma3"]
    adapter = make_adapter(hf, tmp_path / "adapter", r=32, lora_alpha=16)
    convert_lora_to_gguf(adapter, base_gguf, tmp_path / "a.gguf", "q8_0", quiet=True)
    convert_gguf_lora_to_peft(tmp_path / "a.gguf", hf, tmp_path / "back", quiet=True)
    with_adapter, ids = next_logits_gguf(base_gguf, adapters=(str(tmp_path / "a.gguf"),))
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32), tmp_path / "back")
    assert sum(name.endswith(".lora_A") for name, _ in peft.named_modules()) == 14  # exactly the adapter's modules wrapped
    model = peft.merge_and_unload()
    model.save_pretrained(tmp_path / "merged")
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(hf).save_pretrained(tmp_path / "merged")
    reference = next_logits_hf(tmp_path / "merged", ids)
    base_only, _ = next_logits_gguf(base_gguf)
    delta = np.abs(reference - base_only).max()
    assert delta > 0.5
    # llama.cpp multiplies q8_0 factors with activations quantised to 8 bits as well: ~1 % of the effect
    assert np.abs(with_adapter - reference).max() < 3e-2 * delta
    assert (with_adapter.argmax(-1) == reference.argmax(-1)).all()


def test_refusals_and_cli(tiny_lora_bases, tmp_path):
    from preflexor_local.convert.gguf_lora_to_peft import convert_gguf_lora_to_peft
    from preflexor_local.convert.lora_gguf import convert_lora_to_gguf

    hf, base_gguf = tiny_lora_bases["gemma3"]
    code, _, err = run_cli("convert", "lora-peft", str(tmp_path / "missing.gguf"), "--base", str(hf), "-o", str(tmp_path / "m"))
    assert code != 0 and "adapter not found" in err and "Traceback" not in err and "unexpected" not in err
    with pytest.raises(InvalidModelError, match="not a LoRA adapter GGUF"):
        convert_gguf_lora_to_peft(base_gguf, hf, tmp_path / "x", quiet=True)
    adapter = make_adapter(hf, tmp_path / "adapter")
    convert_lora_to_gguf(adapter, base_gguf, tmp_path / "a.gguf", "f32", quiet=True)
    with pytest.raises(InvalidModelError, match="is for 'gemma3'"):
        convert_gguf_lora_to_peft(tmp_path / "a.gguf", tiny_lora_bases["llama"][0], tmp_path / "y", quiet=True)
    code, out, err = run_cli("convert", "lora-peft", str(tmp_path / "a.gguf"), "--base", str(hf), "-o", str(tmp_path / "z"), "--json")
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["modules"] == 14
    code, out, err = run_cli("convert", "lora-peft", str(tmp_path / "a.gguf"), "--base", str(hf), "-o", str(tmp_path / "z"))
    assert code != 0 and "already exists" in err and "Traceback" not in err
