"""The AMX fallback: the decision from a probe child (one that really dies by SIGSEGV, one that decodes), its cache,
the forced policies, and loads without extra buffer types on a quantised model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from convert_cli import run_cli

from preflexor_local.backends import llamacpp_load as L
from preflexor_local.errors import UsageError

AMX_INFO = "CPU : SSE3 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
SEGFAULT = [sys.executable, "-c", "import ctypes; ctypes.string_at(0)"]  # a real SIGSEGV in native code
DECODES = [sys.executable, "-c", "pass"]
FAILS = [sys.executable, "-c", "raise SystemExit('no quantizer')"]


def test_a_probe_child_killed_by_sigsegv_means_broken_and_the_verdict_is_cached(tmp_path):
    cache = tmp_path / "llama-probe.json"
    v = L.decide(AMX_INFO, cache, command=SEGFAULT)
    assert v.extra_bufts is False and "SIGSEGV" in v.reason and "AMX is broken" in v.reason
    assert "15 %" in v.note and L.ENV in v.note
    # Cached per CPU and library build: a second decision does not probe again (this child would say "works").
    assert L.decide(AMX_INFO, cache, command=DECODES) == v
    assert list(json.loads(cache.read_text()).values()) == [{"extra_bufts": False, "reason": v.reason}]


def test_a_probe_child_that_decodes_keeps_extra_buffers(tmp_path):
    v = L.decide(AMX_INFO, tmp_path / "c.json", command=DECODES)
    assert v.extra_bufts is True and v.note is None and "AMX works" in v.reason


def test_no_amx_in_the_build_means_no_probe(tmp_path):
    v = L.decide(AMX_INFO.replace("AMX_INT8 = 1", ""), tmp_path / "c.json", command=SEGFAULT)
    assert v.extra_bufts is True and not (tmp_path / "c.json").exists()


def test_a_probe_that_cannot_run_is_safe_for_this_process_and_not_cached(tmp_path):
    v = L.decide(AMX_INFO, tmp_path / "c.json", command=FAILS)
    assert v.extra_bufts is False and "could not be checked" in v.reason and "no quantizer" in v.reason
    assert not (tmp_path / "c.json").exists()


def test_a_hung_probe_means_broken(tmp_path):
    ok, why = L.run_probe([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1)
    assert ok is False and "hung" in why


def test_the_real_probe_child_quantises_a_tiny_model_and_decodes(tmp_path):
    """The child that decides on AMX machines, run here: a Q4_K_M model written and quantised by the project."""
    ok, why = L.run_probe(L.probe_command(str(tmp_path), 1))
    assert ok is True, why
    from preflexor_local.gguf_meta import read_gguf

    assert read_gguf(tmp_path / "probe-q4_k_m.gguf").get("general.file_type") == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M


@pytest.fixture(scope="module")
def q4_model(tmp_path_factory):
    from preflexor_local.backends.llamacpp_probe import write_tiny_gguf
    from preflexor_local.convert.quantize import quantize_gguf

    work = tmp_path_factory.mktemp("q4")
    quantize_gguf(write_tiny_gguf(work / "f32.gguf"), work / "q4.gguf", "q4_k_m", threads=1, quiet=True)
    return work / "q4.gguf"


def test_forced_off_loads_without_extra_buffer_types_and_says_so_once(q4_model, monkeypatch, capsys):
    monkeypatch.setenv(L.ENV, "off")
    monkeypatch.setattr(L, "_noted", set())
    first = L.open_llama(q4_model, n_ctx=128, n_threads=1)
    second = L.open_llama(q4_model, n_ctx=128, n_threads=1)
    try:
        assert first.model_params.use_extra_bufts is False and second.model_params.use_extra_bufts is False
        first.eval([1, 5, 6, 7])  # decodes
        assert first.n_tokens == 4
    finally:
        first.close()
        second.close()
    assert capsys.readouterr().err.count("note: llama.cpp loads without extra buffer types") == 1
    import llama_cpp.llama_cpp as capi

    assert capi.llama_model_default_params().use_extra_bufts is True  # the swap is undone after the load


def test_forced_on_and_a_bad_policy(q4_model, monkeypatch):
    monkeypatch.setenv(L.ENV, "on")
    llm = L.open_llama(q4_model, n_ctx=128, n_threads=1)
    assert llm.model_params.use_extra_bufts is True
    llm.close()
    monkeypatch.setenv(L.ENV, "sometimes")
    with pytest.raises(UsageError, match=f"{L.ENV} must be one of auto, on, off, got 'sometimes'"):
        L.policy()


def test_the_backend_reports_the_fallback_in_describe_and_the_cli_in_one_line(q4_model, monkeypatch):
    from preflexor_local.backends import load
    from preflexor_local.config import LoadOptions

    monkeypatch.setenv(L.ENV, "off")
    backend = load(str(q4_model), LoadOptions(ctx=128, threads=1))
    try:
        d = backend.describe()
        assert d["extra_bufts"] is False and "PREFLEXOR_LLAMA_EXTRA_BUFTS=on" in d["note"]
    finally:
        backend.close()
    monkeypatch.setenv(L.ENV, "maybe")
    code, out, err = run_cli("ask", "Why?", "--model", str(q4_model))
    assert code != 0 and f"{L.ENV} must be one of" in err and "Traceback" not in err


def test_the_peer_server_entry_point_applies_the_same_verdict(q4_model, tmp_path, monkeypatch):
    """``python -m preflexor_local.backends.llamacpp_load ARGS`` is llama_cpp.server loading without extra buffers when off."""
    import os

    env = {**os.environ, L.ENV: "off"}
    code = (
        "import sys, runpy\n"
        "import llama_cpp.llama as ll\n"
        "seen = []\n"
        "real = ll.Llama.__init__\n"
        "def spy(self, *a, **k):\n"
        "    real(self, *a, **k); seen.append(self.model_params.use_extra_bufts); raise SystemExit(0 if seen == [False] else 3)\n"
        "ll.Llama.__init__ = spy\n"
        "from preflexor_local.backends.llamacpp_load import serve_main\n"
        f"serve_main(['--model', {str(q4_model)!r}, '--n_ctx', '128', '--port', '1'])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "note: llama.cpp loads without extra buffer types" in done.stderr


def test_the_fallback_cost_bench_runs(q4_model):
    from scripts import load_script

    bench = load_script("bench/extra_bufts.py")
    got = bench.main(["--model", str(q4_model), "--tokens", "4", "--runs", "1", "--threads", "1"])
    assert got["on_tok_s"] > 0 and got["off_tok_s"] > 0 and got["ratio"] == got["off_tok_s"] / got["on_tok_s"]
