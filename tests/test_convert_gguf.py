"""HF -> GGUF with our converter: llama.cpp loads the result, the tags keep their ids, greedy tokens equal transformers'."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from convert_cli import run_cli
from convert_fixtures import build_tiny

from preflexor_local.backends.llamacpp_load import open_llama
from preflexor_local.errors import InvalidModelError, ModelNotFoundError, UsageError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    base = tmp_path_factory.mktemp("tiny-gguf")
    return {arch: build_tiny(base / arch, arch=arch, tied=(arch == "gemma3")) for arch in ("llama", "qwen2", "qwen3", "gemma3")}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "gemma3"])
def test_f32_round_trip_is_exact(tiny_dirs, tmp_path, arch):
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf
    from preflexor_local.convert.verify import verify

    out = tmp_path / f"{arch}.gguf"
    res = convert_to_gguf(tiny_dirs[arch], out, "f32", quiet=True)
    assert res.arch == {"llama": "llama"}.get(arch, arch) and out.is_file()
    assert all(isinstance(i, int) for i in res.tag_ids.values()) and res.chat_template
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    report = verify(tiny_dirs[arch], out, n_tokens=12)
    failed = [c for c in report.checks if not c.ok]
    assert not failed, report.table()
    names = [c.name for c in report.checks]
    assert "greedy gguf" in names and "tokenize gguf" in names and sum(n.startswith("tag ") for n in names) == 4


def test_llama_logits_match_and_f16(tiny_dirs, tmp_path):
    import numpy as np

    from preflexor_local.convert.hf_to_gguf import convert_to_gguf
    from preflexor_local.convert.verify import _GGUF, _HF

    hf = _HF(tiny_dirs["llama"])
    ids = hf.encode("Spider silk <|thinking|> is tough")
    ref = hf.logits(ids)
    for outtype, tol in (("f32", 1e-2), ("f16", 3e-2)):  # max |dlogit| relative to the logits spread (llama.cpp keeps the KV cache in f16)
        out = convert_to_gguf(tiny_dirs["llama"], tmp_path / f"m-{outtype}.gguf", outtype, quiet=True).output
        g = _GGUF(Path(out), 256)
        try:
            err = np.abs(ref - g.logits(ids)).max() / ref.std()
            assert err < tol, (outtype, err)
            assert g.greedy(ids, 10) == hf.greedy(ids, 10)
        finally:
            g.close()


def test_quantised_outputs_load_and_generate(tiny_dirs, tmp_path):

    from preflexor_local.convert.hf_to_gguf import convert_to_gguf
    from preflexor_local.convert.verify import gguf_weight_type, verify

    for outtype in ("q8_0", "q4_k_m"):
        out = tmp_path / f"m-{outtype}.gguf"
        convert_to_gguf(tiny_dirs["llama"], out, outtype, quiet=True)
        assert gguf_weight_type(out) == outtype
        llm = open_llama(out, n_ctx=128)
        try:
            text = llm.create_completion("Spider silk", max_tokens=8, temperature=0.0)["choices"][0]["text"]
            assert llm.tokenize(b"<|thinking|>", add_bos=False, special=True) == [llm.tokenize(b"<|thinking|>", add_bos=False, special=True)[0]]
        finally:
            llm.close()
        assert isinstance(text, str)
        report = verify(tiny_dirs["llama"], out, n_tokens=8)
        assert all(c.ok for c in report.checks if c.name != "top-1 gguf"), report.table()  # tags, template, tokens exact
        top1 = next(c for c in report.checks if c.name == "top-1 gguf")
        assert "top-1 agreement" in top1.detail
        if outtype == "q8_0":  # a random 64-wide model is too flat for 4-bit top-1 tolerances; 8-bit must pass
            assert top1.ok, top1.detail
    # bf16 is written directly (numpy), as is q8_0
    out = convert_to_gguf(tiny_dirs["qwen2"], tmp_path / "q-bf16.gguf", "bf16", quiet=True)
    assert gguf_weight_type(out.output) == "bf16"


@pytest.mark.slow
def test_script_and_cli(tiny_dirs, tmp_path):
    out = tmp_path / "cli.gguf"
    r = subprocess.run(
        [sys.executable, str(ROOT / "convert" / "hf_to_gguf.py"), str(tiny_dirs["llama"]), "--outtype", "f16", "-o", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["outtype"] == "f16" and out.is_file()
    code, stdout, err = run_cli("convert", "verify", tiny_dirs["llama"], out, "--json", "--tokens", "6")
    assert code == 0, stdout + err
    assert json.loads(stdout)["ok"] is True
    code, _, err = run_cli("convert", "gguf", tiny_dirs["llama"], "-o", out)
    assert code == 2 and "already exists" in err and "Traceback" not in err


def test_verify_fails_on_a_wrong_copy(tiny_dirs, tmp_path):
    """A GGUF of a different model must fail verify (the check can fail), with exit code 1 from the CLI."""
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf

    other = build_tiny(tmp_path / "other", arch="llama", seed=1)
    out = convert_to_gguf(other, tmp_path / "other.gguf", "f32", quiet=True).output
    code, stdout, _ = run_cli("convert", "verify", tiny_dirs["llama"], out, "--tokens", "6")
    assert code == 1 and "FAIL" in stdout


def test_bad_inputs(tiny_dirs, tmp_path):
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf

    with pytest.raises(ModelNotFoundError):
        convert_to_gguf(tmp_path / "missing", tmp_path / "x.gguf")
    (tmp_path / "notckpt").mkdir()
    with pytest.raises(InvalidModelError, match="no config.json"):
        convert_to_gguf(tmp_path / "notckpt", tmp_path / "x.gguf")
    # unsupported architecture: refused by name, before weights are even looked at
    bad = tmp_path / "bert"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"architectures": ["BertForMaskedLM"], "model_type": "bert"}))
    with pytest.raises(InvalidModelError, match="BertForMaskedLM is not supported"):
        convert_to_gguf(bad, tmp_path / "x.gguf")
    moe = tmp_path / "moe"
    moe.mkdir()
    (moe / "config.json").write_text(json.dumps({"architectures": ["MixtralForCausalLM"]}))
    with pytest.raises(InvalidModelError, match="mixture-of-experts"):
        convert_to_gguf(moe, tmp_path / "x.gguf")
    # truncated safetensors
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    for f in tiny_dirs["llama"].iterdir():
        data = f.read_bytes()
        (trunc / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    with pytest.raises(InvalidModelError, match="truncated or corrupt"):
        convert_to_gguf(trunc, tmp_path / "x.gguf")
    with pytest.raises(UsageError, match="outtype"):
        convert_to_gguf(tiny_dirs["llama"], tmp_path / "x.gguf", "q7_z")
    assert not (tmp_path / "x.gguf").exists()


ORDINARY = [
    "Hello world",
    "emoji 😀🧵 and accents: café Ångström",
    "CJK 蜘蛛の糸は強い。蜘蛛丝很坚韧",
    "numbers 1234567 3.14159 -42",
    "x <|thinking|>",
    "def f(x): return x",
]


@pytest.mark.parametrize(
    "tokenizer,kind,pre", [("llama3", "gpt2", "llama-bpe"), ("qwen2", "gpt2", "qwen2"), ("custom", "gpt2", "gpt-2"), ("spm", "llama", "default")]
)
def test_tokenizer_kinds(tmp_path, tokenizer, kind, pre):
    """Known pre-tokenizers map by their regex; an unknown one gets the stated fallback (and verify shows the damage)."""
    from transformers import AutoTokenizer

    from preflexor_local.convert.hf_to_gguf import convert_to_gguf
    from preflexor_local.convert.verify import TRICKY

    src = build_tiny(tmp_path / tokenizer, arch="llama", tokenizer=tokenizer)
    res = convert_to_gguf(src, tmp_path / "m.gguf", "f32", quiet=True)
    assert (res.tokenizer, res.pre_tokenizer) == (kind, pre)
    assert any("fallback" in n for n in res.notes) == (tokenizer == "custom")
    hf = AutoTokenizer.from_pretrained(src)
    llm = open_llama(res.output, vocab_only=True)
    try:

        def same(s):
            return hf.encode(s) == llm.tokenize(s.encode(), add_bos=res.tokenizer == "llama", special=True)

        if tokenizer == "custom":
            assert not all(same(s) for s in TRICKY)  # the fallback is visibly not the same split
        else:
            assert all(same(s) for s in ORDINARY), [s for s in ORDINARY if not same(s)]
            if tokenizer != "spm":  # byte-level BPE: exact on every tricky string too
                assert all(same(s) for s in TRICKY), [s for s in TRICKY if not same(s)]
        assert llm.tokenize(b"<|reflect|>", add_bos=False, special=True) == [res.tag_ids["<|reflect|>"]]
    finally:
        llm.close()


def test_llama3_rope_scaling(tmp_path):
    """Llama 3 rope scaling becomes the rope_freqs tensor: logits over a 48-token sequence still match."""
    import numpy as np

    from preflexor_local.convert.hf_to_gguf import convert_to_gguf
    from preflexor_local.convert.verify import _GGUF, _HF

    src = build_tiny(tmp_path / "rope", arch="llama")
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_parameters"] = {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
        "rope_theta": 500000.0,
    }
    (src / "config.json").write_text(json.dumps(cfg))
    out = convert_to_gguf(src, tmp_path / "rope.gguf", "f32", quiet=True).output
    hf, g = _HF(src), _GGUF(Path(out), 256)
    try:
        ids = list(range(11, 59))
        ref = hf.logits(ids)
        assert np.abs(ref - g.logits(ids)).max() / ref.std() < 1e-2
    finally:
        g.close()


def test_interrupted_conversion_leaves_no_file(tiny_dirs, tmp_path, monkeypatch):
    """Ctrl-C in the middle of writing: nothing under the final name, no temp left, an older file kept intact."""
    import preflexor_local.convert.hf_to_gguf as h2g

    real, calls = h2g._encode, []

    def interrupted(arr, qtype):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(arr, qtype)

    out = tmp_path / "m.gguf"
    monkeypatch.setattr(h2g, "_encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        h2g.convert_to_gguf(tiny_dirs["llama"], out, "f16", quiet=True)
    assert list(tmp_path.iterdir()) == []
    out.write_bytes(b"older file")
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        h2g.convert_to_gguf(tiny_dirs["llama"], out, "q4_k_m", force=True, quiet=True)
    assert out.read_bytes() == b"older file" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    monkeypatch.setattr(h2g, "_encode", real)
    h2g.convert_to_gguf(tiny_dirs["llama"], out, "f16", force=True, quiet=True)
    assert out.read_bytes()[:4] == b"GGUF"


def test_verify_names_where_greedy_runs_part_even_when_one_stopped_early():
    """One run ending at EOS is a prefix of the other: the report says where it stopped (it raised StopIteration)."""
    from preflexor_local.convert.verify import first_difference

    assert first_difference([1, 2, 3], [1, 2, 3, 4]) == 3
    assert first_difference([1, 2, 3, 4], [1, 2]) == 2
    assert first_difference([1, 5, 3], [1, 2, 3]) == 1
    assert first_difference([1, 2], [1, 2]) is None
