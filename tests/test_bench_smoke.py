"""Every ``bench/`` script runs to its end on a tiny model at small sizes, so that a refactor cannot break one unnoticed.

Each script runs as a user runs it (``python bench/<script>.py …``, its own process) and must exit 0 and print its
table; the figures are not judged (on a tiny random model they mean nothing). ``bench/servers.py`` is covered
through ``pairs.py`` and ``serve.py``, which use it. Runs that take more than about two seconds here are ``slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from scripts import ROOT

SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
SMOKED = {
    "adapter_check.py",
    "ask_overhead.py",
    "convert.py",
    "demo_quality.py",
    "extra_bufts.py",
    "mlx.py",
    "pairs.py",
    "rag.py",
    "reasoner_probe.py",
    "serve.py",
    "train.py",
    "transcripts.py",
}
HELPERS = {"servers.py"}


@pytest.fixture(scope="module")
def env(isolated_home) -> dict:
    e = dict(os.environ)
    e.update(PREFLEXOR_HOME=str(isolated_home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", NO_COLOR="1", OMP_NUM_THREADS="1")
    return e


@pytest.fixture(scope="module")
def long_tiny(tiny_llama, tmp_path_factory) -> tuple[Path, Path]:
    """(HF dir, f32 GGUF) of ``tiny_llama`` with a 4096-token window: the engine's prompts outgrow its 512 tokens."""
    import shutil

    from preflexor_local.convert.hf_to_gguf import convert_to_gguf

    root = tmp_path_factory.mktemp("bench-tiny")
    hf = Path(shutil.copytree(tiny_llama, root / "tiny-llama-4k"))
    cfg = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**cfg, "max_position_embeddings": 4096}))
    return hf, Path(convert_to_gguf(hf, root / "tiny-llama-4k.gguf", "f32", quiet=True).output)


def bench(env: dict, script: str, *args, timeout: float = 600) -> str:
    """Run ``bench/<script>`` with ``args``; its stdout (the test fails with the tail of both streams on an error)."""
    r = subprocess.run([sys.executable, str(ROOT / "bench" / script), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"bench/{script} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r.stdout


def test_every_bench_script_has_a_smoke_run():
    """Here, or in the tests of the feature it measures (which then name the script)."""
    others = [p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py") if p.name != Path(__file__).name]
    missing = [s for s in SCRIPTS if s not in SMOKED | HELPERS and not any(f"bench/{s}" in t or f'"bench" / "{s}"' in t for t in others)]
    assert not missing, f"{missing}: a bench/ script needs a smoke run (here, or in its feature's tests)"
    assert SMOKED | HELPERS <= set(SCRIPTS), "a smoke run here names a script that is gone"


def test_benches_import_only_public_names():
    """``from preflexor_local… import _private`` in a bench is a refactor waiting to break it."""
    import ast

    for name in SCRIPTS:
        tree = ast.parse((ROOT / "bench" / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("preflexor_local"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                parts = [p for p in node.module.split(".") if p.startswith("_")]
                assert not private and not parts, f"bench/{name}:{node.lineno} imports {private or parts} from {node.module}"


def test_adapter_check(env, long_tiny):
    got = json.loads(bench(env, "adapter_check.py", "--model", long_tiny[1], "--max-tokens", 12, "--ctx", 2048, "--json"))
    assert got["model"] == "tiny-llama-4k" and got["thinking_words"] >= 0 and isinstance(got["meets_bar"], bool)


def test_ask_overhead(env, long_tiny):
    args = ["--model", long_tiny[1], "--ctx", 2048, "--rounds", 2, "--max-tokens", 6, "--repeats", 1, "--rag-k", 1, "--rag-tokens", 16, "--startup-runs", 1]
    out = bench(env, "ask_overhead.py", *args)
    assert "ratio engine/raw" in out and "question only:" in out and "RAG-like context (1 chunks" in out


@pytest.mark.slow
def test_convert(env, tiny_llama, tiny_llama_gguf):
    # the reference part on a tiny pair (its GGUF was written by our own converter, so every tensor must match)
    out = bench(env, "convert.py", "--sizes", "64x1", "--types", "f16,q4_k_m", "--gemma-hf", tiny_llama, "--reference", tiny_llama_gguf)
    assert "llama-h64-l1" in out and "q4_k_m" in out
    assert "same names: True" in out and "DIFFERENT" not in out


@pytest.mark.slow
def test_demo_quality_and_transcripts(env, long_tiny, tmp_path):
    out = bench(
        env,
        "demo_quality.py",
        "-o",
        tmp_path,
        "--models",
        "adapter",
        "--model",
        long_tiny[1],
        "--limit",
        1,
        "--rounds",
        1,
        "--temperature",
        0,
        "--max-tokens",
        24,
    )
    assert "| thinking_closed |" in out and "| relevance_median |" in out
    assert json.loads((tmp_path / "report.json").read_text())["adapter"]["questions"] == 1
    sampling = json.loads((tmp_path / "adapter.jsonl").read_text().splitlines()[0])["transcript"]["settings"]["sampling"]
    assert (sampling["temperature"], sampling["max_tokens"]) == (0, 24)
    md = bench(env, "transcripts.py", tmp_path / "adapter.jsonl", "--limit", 1)
    assert md.startswith("### base + adapter (default): ") and "[round 1 · thinking" in md


def test_extra_bufts(env, tiny_llama_gguf):
    out = bench(env, "extra_bufts.py", "--model", tiny_llama_gguf, "--tokens", 4, "--runs", 1, "--threads", 1)
    assert "ratio off/on" in out


@pytest.mark.slow
def test_mlx(env):
    pytest.importorskip("mlx_lm")
    out = bench(env, "mlx.py", "--hidden", 64, "--layers", 2, "--tokens", 8, "--repeats", 1, "--steps", 2, "--batch", 2, "--rank", 4)
    assert "ratio ours/mlx-lm" in out and "s/step" in out


@pytest.mark.slow
def test_pairs(env, long_tiny):
    out = bench(env, "pairs.py", "--model", long_tiny[1], "--ctx", 2048, "-n", 1, "--concurrency", "1,2", "--max-tokens", 8, "--parallel", 2)
    assert "rows ok" in out and out.count("yes") == 2


@pytest.mark.slow
def test_rag(env):
    out = bench(env, "rag.py", "--files", 2, "--words", 60, "--rounds", 1, "--sizes", 300, "--dim", 16, "--queries", 3, "-k", 5)
    assert "uniform" in out and "clustered" in out and "ratio store/raw throughput" in out


@pytest.mark.slow
@pytest.mark.slow
def test_reasoner_probe(env):
    from preflexor_local.models import demo_adapter_path

    out = bench(env, "reasoner_probe.py", demo_adapter_path(), "--limit", 1, "--max-tokens", 8)
    assert out.rstrip().endswith("of 1") and out.startswith("gr-")


def test_serve(env, long_tiny):
    args = ["--model", long_tiny[1], "--ctx", 2048, "--rounds", 1, "--max-tokens", 6, "--repeats", 1, "--clients", 1, "--parallel", 1, "--threads", 1]
    out = bench(env, "serve.py", *args)
    assert "generated tok/s (end to end)" in out and "tokens generated" in out


@pytest.mark.slow
def test_train(env, tiny_llama, long_tiny):
    out = bench(env, "train.py", "--model", tiny_llama, "--steps", 2, "--gen-teacher", long_tiny[1], "--gen-n", 1)
    assert out.count("ratio cpu time") == 2 and "generation: 1 pairs" in out


def test_a_failing_bench_fails_its_smoke_run(env):
    with pytest.raises(AssertionError, match="exited 2"):
        bench(env, "rag.py", "--no-such-option")
