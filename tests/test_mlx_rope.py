"""HF -> MLX keeps the rotary settings transformers 5 writes (issue 9, defect 1).

transformers 5 saves ``rope_parameters`` (per layer type for Gemma 3) and no top-level
``rope_theta``; mlx-lm then fell back to its own defaults (Qwen2 base 1e6, Gemma 3
period 6). Each tiny model here is saved by the installed transformers with bases
that are neither library's default, so a lost setting shows as different logits.
The three MLX paths are checked: ``convert mlx`` (read back by plain mlx-lm), the
MLX backend on the HF folder, and the MLX trainer's model; plus ``convert verify``
over HF, GGUF and MLX on a Qwen2 whose config is exactly what transformers 5 writes.
"""

from __future__ import annotations

import json

import pytest

from preflexor_local.errors import InvalidModelError
from preflexor_local.mlx_config import mlx_overrides

ARCHS = ("qwen2", "qwen3", "llama", "gemma3")
THETA, LOCAL_THETA = 100.0, 40.0  # far from every default (1e4, 1e6), so a lost base moves the logits a lot
PROMPTS = ("Spider silk is tough because of its hierarchical structure", "Question: why? <|thinking|> beta sheets")
ATOL = 1e-3  # fp32 on both sides; measured differences are ~1e-5


# -- the rule, on config dicts (no MLX needed) ---------------------------------------------------


def test_transformers5_qwen2_gets_its_base_back():
    cfg = {"model_type": "qwen2", "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}}
    assert mlx_overrides(cfg) == {"rope_theta": 10000.0, "rope_scaling": None}
    # no rope key at all: transformers' default (1e4), not mlx-lm's qwen2 default (1e6)
    assert mlx_overrides({"model_type": "qwen2"})["rope_theta"] == 10000.0


def test_old_style_and_scaled_configs():
    old = {"model_type": "llama", "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}}
    out = mlx_overrides(old)
    assert out["rope_theta"] == 500000.0 and out["rope_scaling"]["type"] == "llama3" and out["rope_scaling"]["factor"] == 8.0
    applied = {**old, **out}
    assert {**applied, **mlx_overrides(applied)} == applied  # a fixed point: normalising twice changes nothing
    phi = {
        "model_type": "phi3",
        "rope_parameters": {
            "rope_type": "longrope",
            "rope_theta": 1e4,
            "partial_rotary_factor": 0.5,
            "short_factor": [1.0],
            "long_factor": [2.0],
            "original_max_position_embeddings": 4096,
        },
    }
    out = mlx_overrides(phi)
    assert out["partial_rotary_factor"] == 0.5 and out["original_max_position_embeddings"] == 4096
    assert out["rope_scaling"]["type"] == "longrope" and "rope_theta" not in out["rope_scaling"]


def test_gemma3_bases_and_period():
    cfg = {
        "model_type": "gemma3_text",
        "layer_types": ["sliding_attention"] * 3 + ["full_attention"],
        "rope_parameters": {
            "sliding_attention": {"rope_type": "default", "rope_theta": 40.0},
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 100.0},
        },
    }
    out = mlx_overrides(cfg)
    assert out["rope_theta"] == 100.0 and out["rope_local_base_freq"] == 40.0 and out["sliding_window_pattern"] == 4
    assert out["rope_scaling"] == {"rope_type": "linear", "factor": 8.0, "type": "linear"}
    # the multimodal wrapper nests the text model
    nested = mlx_overrides({"model_type": "gemma3", "text_config": {k: v for k, v in cfg.items() if k != "model_type"}})
    assert nested["text_config"]["rope_local_base_freq"] == 40.0 and nested["text_config"]["layer_types"] == cfg["layer_types"]
    # an older config names the local base at the top level
    old = mlx_overrides({"model_type": "gemma3_text", "rope_theta": 5e5, "rope_local_base_freq": 77.0})
    assert old["rope_theta"] == 5e5 and old["rope_local_base_freq"] == 77.0 and "sliding_window_pattern" not in old
    with pytest.raises(InvalidModelError, match="cannot be read"):  # one clear error, not a traceback
        mlx_overrides({"model_type": "llama", "rope_parameters": {"rope_theta": "fast"}})
    with pytest.raises(InvalidModelError, match="fixed local/global period"):
        mlx_overrides({**cfg, "layer_types": ["sliding_attention", "full_attention", "full_attention", "sliding_attention"]})


# -- tiny models saved by the installed transformers ---------------------------------------------


def _save_with_rope(path, arch: str) -> None:
    """Re-save the config through transformers with non-default bases (and, for Gemma 3, a short window)."""
    import transformers as tf

    cfg = tf.AutoConfig.from_pretrained(path)
    if arch == "gemma3":
        cfg.rope_parameters["full_attention"]["rope_theta"] = THETA
        cfg.rope_parameters["sliding_attention"]["rope_theta"] = LOCAL_THETA
        cfg.sliding_window = 4  # shorter than the prompts, so the window's meaning is checked too
    else:
        cfg.rope_parameters["rope_theta"] = THETA
    cfg.save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    from convert_fixtures import build_tiny

    base = tmp_path_factory.mktemp("rope")
    dirs = {}
    for arch in ARCHS:
        d = build_tiny(base / arch, arch=arch, layers=4 if arch == "gemma3" else 2, tied=arch == "gemma3")
        _save_with_rope(d, arch)
        raw = json.loads((d / "config.json").read_text())
        assert "rope_theta" not in raw and "rope_parameters" in raw  # what transformers 5 writes
        dirs[arch] = d
    return dirs


class _Ref:
    """transformers in fp32: the reference logits and greedy tokens."""

    def __init__(self, path):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def logits(self, ids):
        import torch

        with torch.no_grad():
            return self.model(torch.tensor([ids])).logits[0].numpy()


def _greedy(logits_fn, ids, n=8):
    import numpy as np

    seq = list(ids)
    for _ in range(n):  # plain argmax: no sampler or EOS rule between the two sides
        seq.append(int(np.argmax(logits_fn(seq)[-1])))
    return seq[len(ids) :]


def _mlx_logits(model):
    import mlx.core as mx
    import numpy as np

    return lambda ids: np.array(model(mx.array([ids]))[0].astype(mx.float32))


def _assert_same(ref, logits_fn, label):
    import numpy as np

    for text in PROMPTS:
        ids = ref.tok.encode(text)
        err = float(np.abs(ref.logits(ids) - logits_fn(ids)).max())
        assert err < ATOL, f"{label}: max |dlogit| {err:.3g} on {text!r}"
        assert _greedy(logits_fn, ids) == _greedy(ref.logits, ids), f"{label}: greedy tokens differ on {text!r}"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_mlx_paths_match_transformers(tiny_dirs, arch, tmp_path):
    pytest.importorskip("mlx_lm", reason="MLX is not installed on this platform (pip install 'preflexor-local[mlx]')")
    from mlx_fixtures import train_config
    from mlx_lm import load as mlx_load

    from preflexor_local.backends.mlx import MLXBackend
    from preflexor_local.config import LoadOptions
    from preflexor_local.convert.hf_to_mlx import convert_to_mlx
    from preflexor_local.train.mlx.trainer import MLXTrainer

    hf = tiny_dirs[arch]
    ref = _Ref(hf)
    # 1. convert mlx: the written config.json alone must be right (read by plain mlx-lm, as mlx_lm.server would)
    convert_to_mlx(hf, tmp_path / "mlx", dtype="float32", quiet=True)
    model, _ = mlx_load(str(tmp_path / "mlx"))
    _assert_same(ref, _mlx_logits(model), f"{arch} convert mlx")
    # 2. the MLX backend on the HF folder itself
    backend = MLXBackend(hf, LoadOptions())
    _assert_same(ref, _mlx_logits(backend.model), f"{arch} MLX backend")
    backend.close()
    # 3. the MLX trainer's model (fresh LoRA layers start at zero, so it is still the base model)
    trainer = MLXTrainer(train_config(hf, tmp_path / "run", method="orpo"))
    _assert_same(ref, _mlx_logits(trainer.model), f"{arch} MLX trainer")


def test_convert_verify_on_a_transformers5_qwen2(tmp_path):
    """The issue's case: a Qwen2 exactly as transformers 5 saves it (base 1e4 inside rope_parameters)."""
    pytest.importorskip("mlx_lm", reason="MLX is not installed on this platform (pip install 'preflexor-local[mlx]')")
    from convert_cli import run_cli
    from convert_fixtures import build_tiny

    hf = build_tiny(tmp_path / "qwen2", arch="qwen2")
    raw = json.loads((hf / "config.json").read_text())
    assert raw["rope_parameters"]["rope_theta"] == 10000.0 and "rope_theta" not in raw
    code, _, err = run_cli("convert", "gguf", hf, "--outtype", "f32", "-o", tmp_path / "q.gguf")
    assert code == 0, err
    code, _, err = run_cli("convert", "mlx", hf, "--dtype", "float32", "-o", tmp_path / "q-mlx")
    assert code == 0, err
    code, stdout, err = run_cli("convert", "verify", hf, tmp_path / "q.gguf", tmp_path / "q-mlx", "--json", "--tokens", "8")
    report = json.loads(stdout)
    greedy = {c["name"]: c for c in report["checks"] if c["name"].startswith("greedy")}
    assert set(greedy) == {"greedy gguf", "greedy mlx"}
    assert all(c["ok"] for c in greedy.values()), greedy
    assert code == 0 and report["ok"], stdout + err
