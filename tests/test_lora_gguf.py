"""PEFT LoRA -> llama.cpp LoRA GGUF: base GGUF + adapter in llama.cpp gives the merged HF model's greedy tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from convert_cli import run_cli
from convert_fixtures import build_tiny

from preflexor_local.config import LoadOptions, Sampling
from preflexor_local.errors import InvalidModelError, ModelNotFoundError

GREEDY = Sampling(temperature=0, max_tokens=16, seed=0, stop_repeats=False)
MSGS = [{"role": "user", "content": "Why is spider silk tough?"}]


def make_adapter(base: Path, out: Path, seed: int = 1, **lora_kw) -> Path:
    """A PEFT LoRA with random (non-zero) A and B on every linear layer: no training, just a known delta."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    kw = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **lora_kw}
    peft = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **kw))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.3)
    peft.save_pretrained(out)
    return out


def merged(base: Path, adapter: Path, out: Path) -> Path:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).merge_and_unload()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def greedy(spec: str, **opts) -> list[str]:
    from preflexor_local.backends import GenerationRequest, load

    b = load(spec, LoadOptions(**opts))
    try:
        gen = b.generate(GenerationRequest(messages=MSGS, sampling=GREEDY))
        return [gen.text, gen.completion_tokens]
    finally:
        b.close()


PROMPTS = ["Spider silk is tough because", "Bone combines stiff mineral", "Nacre deflects cracks through layered"]


def next_logits_gguf(gguf: Path, **opts):
    """llama.cpp's next-token logits after each prompt (the base GGUF, with any adapters)."""
    import numpy as np

    from preflexor_local.backends import load

    b = load(str(gguf), LoadOptions(**opts))
    try:
        out = []
        for text in PROMPTS:
            ids = b.encode(text)
            b.llm.reset()
            b.llm.eval(ids)  # without logits_all, llama-cpp-python keeps no scores: read the context's own
            out.append(np.ctypeslib.as_array(b.llm._ctx.get_logits(), shape=(b.llm.n_vocab(),)).astype(np.float64))
        return np.stack(out), [b.encode(t) for t in PROMPTS]
    finally:
        b.close()


def next_logits_hf(model_dir: Path, ids: list[list[int]]):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return np.stack([model(torch.tensor([row])).logits[0, -1].double().numpy() for row in ids])


@pytest.fixture(scope="module")
def tiny(tiny_lora_bases):
    return tiny_lora_bases


@pytest.mark.parametrize("arch,lora_kw", [("llama", {}), ("gemma3", {"use_rslora": True, "alpha_pattern": {"q_proj": 2}})])
def test_base_plus_adapter_in_llamacpp_equals_merged_hf(tiny, tmp_path, arch, lora_kw):
    from preflexor_local.convert.lora_gguf import convert_lora_to_gguf

    hf, base_gguf = tiny[arch]
    adapter = make_adapter(hf, tmp_path / "adapter", **lora_kw)
    res = convert_lora_to_gguf(adapter, base_gguf, tmp_path / "adapter.gguf", "f32", quiet=True)
    assert res.rank == 4 and res.tensors == 2 * 7 * 2  # 7 linear layers x 2 blocks, A and B each
    import numpy as np

    with_adapter, ids = next_logits_gguf(base_gguf, adapters=(str(tmp_path / "adapter.gguf"),))
    reference = next_logits_hf(merged(hf, adapter, tmp_path / "merged"), ids)
    base_only, _ = next_logits_gguf(base_gguf)
    delta = np.abs(reference - base_only).max()
    assert delta > 0.5  # the adapter changes the model a lot: the comparison below can fail
    print("max |Δ|", np.abs(with_adapter - reference).max(), "adapter effect", delta)
    assert np.abs(with_adapter - reference).max() < 1e-2 * delta
    assert (with_adapter.argmax(-1) == reference.argmax(-1)).all()


def test_adapter_scale_zero_is_the_base(tiny, tmp_path):
    from preflexor_local.convert.lora_gguf import convert_lora_to_gguf

    hf, base_gguf = tiny["llama"]
    convert_lora_to_gguf(make_adapter(hf, tmp_path / "a"), base_gguf, tmp_path / "a.gguf", "f16", quiet=True)
    import numpy as np

    zero, _ = next_logits_gguf(base_gguf, adapters=(f"{tmp_path / 'a.gguf'}:0",))
    full, _ = next_logits_gguf(base_gguf, adapters=(f"{tmp_path / 'a.gguf'}",))
    base, _ = next_logits_gguf(base_gguf)
    assert np.abs(zero - base).max() < 1e-4 < np.abs(full - base).max()


def test_file_keys_and_cli(tiny, tmp_path):
    from preflexor_local.gguf_meta import read_gguf

    hf, base_gguf = tiny["gemma3"]
    adapter = make_adapter(hf, tmp_path / "adapter")
    code, out, err = run_cli(
        "convert", "lora-gguf", adapter, "--base", base_gguf, "-o", tmp_path / "x.gguf", "--outtype", "q8_0", "--chat-template", "gemma", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["rank"] == 4
    info = read_gguf(tmp_path / "x.gguf")
    assert info.get("general.type") == "adapter" and info.get("adapter.type") == "lora"
    assert info.get("adapter.lora.alpha") == 8.0 and info.architecture == "gemma3"
    assert info.get("preflexor.chat_template") == "gemma" and "<start_of_turn>" in info.get("tokenizer.chat_template")


def test_refusals(tiny, tmp_path):
    from preflexor_local.convert.lora_gguf import convert_lora_to_gguf

    hf, base_gguf = tiny["llama"]
    dora = make_adapter(hf, tmp_path / "dora", use_dora=True)
    with pytest.raises(InvalidModelError, match="DoRA"):
        convert_lora_to_gguf(dora, base_gguf, tmp_path / "d.gguf", quiet=True)
    lora = make_adapter(hf, tmp_path / "lora")
    with pytest.raises(InvalidModelError, match="trained on a llama model.*gemma3"):  # another family
        convert_lora_to_gguf(lora, tiny["gemma3"][1], tmp_path / "w.gguf", quiet=True)
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf

    narrow = convert_to_gguf(build_tiny(tmp_path / "narrow", arch="llama", hidden=32), tmp_path / "narrow.gguf", "f32", quiet=True)
    with pytest.raises(InvalidModelError, match="shapes of"):  # same family, other shapes
        convert_lora_to_gguf(lora, narrow.output, tmp_path / "w.gguf", quiet=True)
    assert not (tmp_path / "w.gguf").exists()
    with pytest.raises(InvalidModelError, match="not a LoRA adapter GGUF"):
        greedy(str(base_gguf), adapters=(str(base_gguf),))
    with pytest.raises(ModelNotFoundError, match="adapter file not found"):
        greedy(str(base_gguf), adapters=(str(tmp_path / "missing.gguf"),))
    code, _, err = run_cli("ask", "q", "--model", base_gguf, "--adapter", tmp_path / "missing.gguf")
    assert code == 1 and "adapter file not found" in err and "Traceback" not in err


@pytest.mark.slow
def test_real_gemma_q4_base_plus_adapter_gguf_moves_logits_as_the_lora_does_in_transformers(gemma_gguf, tmp_path):
    """The embedded Gemma 3 270M (Q4_K_M) + a LoRA GGUF in llama.cpp, against its dequantised weights + the same
    LoRA in transformers. The two bases differ by llama.cpp's 8-bit activations, so what is compared is the change
    the adapter makes to the next-token logits, and the adapted model's greedy picks."""
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from preflexor_local.convert.gguf_to_hf import gguf_to_hf
    from preflexor_local.convert.lora_gguf import convert_lora_to_gguf

    hf = tmp_path / "gemma-hf"
    gguf_to_hf(gemma_gguf, hf, quiet=True)
    base_cpp, ids = next_logits_gguf(gemma_gguf)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval()

    def logits(m):
        with torch.no_grad():
            return np.stack([m(torch.tensor([row])).logits[0, -1].double().numpy() for row in ids])

    base_hf = logits(model)
    # The demo adapter's shape: every projection of the top 8 blocks, r 16, alpha 32.
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", r=16, lora_alpha=32, target_modules=targets, layers_to_transform=list(range(10, 18))))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.normal_(0.0, 0.02)
    lora_hf = logits(peft.eval())
    peft.save_pretrained(tmp_path / "adapter")
    res = convert_lora_to_gguf(tmp_path / "adapter", gemma_gguf, tmp_path / "adapter.gguf", "f32", quiet=True)
    assert res.tensors == 8 * 7 * 2
    lora_cpp, _ = next_logits_gguf(gemma_gguf, adapters=(str(tmp_path / "adapter.gguf"),))
    d_hf, d_cpp = (lora_hf - base_hf).ravel(), (lora_cpp - base_cpp).ravel()
    effect = np.abs(d_hf).max()
    fit = float(d_cpp @ d_hf / (d_hf @ d_hf))  # the scale llama.cpp applies, relative to PEFT's alpha / r
    corr = float(np.corrcoef(d_cpp, d_hf)[0, 1])  # over every vocabulary entry of every prompt
    print(f"adapter effect {effect:.3f} · scale fit {fit:.4f} · correlation {corr:.4f} · bases differ by {np.abs(base_cpp - base_hf).max():.3f}")
    assert effect > 1.0  # the adapter moves the logits a lot
    # A wrong scale (alpha/r, rsLoRA) moves the fit by 2x or more, a transposed or misnamed tensor kills the correlation;
    # the Q4 base's 8-bit activations (the bases differ by ~1 logit) leave both within a few percent.
    assert 0.9 < fit < 1.1 and corr > 0.95
    for c, h in zip(lora_cpp, lora_hf):  # llama.cpp's greedy pick is transformers' pick or within 0.5 logit of it
        assert h[c.argmax()] >= h.max() - 0.5
