"""The CLI as a user runs it: a subprocess, streams split between stdout and stderr, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from convert_fixtures import gguf_with_arch

BIN = Path(sys.executable).with_name("preflexor-local")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e.update(PREFLEXOR_HOME=str(tmp_path_factory.mktemp("home")), HF_HUB_CACHE=str(tmp_path_factory.mktemp("hub")), HF_HUB_OFFLINE="1", NO_COLOR="1")
    e.pop("PREFLEXOR_DEBUG", None)
    return e


def cli(env, *args, stdin=None, timeout=300):
    return subprocess.run([str(BIN), *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout)


def test_help_is_fast_because_nothing_heavy_is_imported():
    code = (
        "import sys; from preflexor_local.app import cli\n"
        "try: cli.main(['--help'])\nexcept SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'mlx', 'sentence_transformers', 'trl', 'httpx') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ask" in r.stdout and "models" in r.stdout


@pytest.mark.slow
def test_default_command_is_ask_and_answer_goes_to_stdout_only(env, tiny_llama):
    r = cli(env, "Why is silk tough?", "--model", str(tiny_llama), "-r", "2", "--max-tokens", "6", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert "round 1 · reasoner · thinking" in r.stderr and "round 1 · critic · critique" in r.stderr
    assert "round 2 · reasoner" in r.stderr
    assert "──" not in r.stdout and "Traceback" not in r.stderr


@pytest.mark.slow
def test_json_transcript_from_stdin(env, tiny_llama):
    r = cli(env, "ask", "-", "--model", str(tiny_llama), "--json", "-q", "--max-tokens", "4", "--seed", "1", stdin="What is nacre?\n")
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    assert t["question"] == "What is nacre?" and len(t["rounds"]) == 1 and t["models"]["reasoner"]["backend"] == "transformers"
    assert r.stderr == ""  # --quiet: nothing but the JSON


@pytest.mark.slow
def test_default_model_end_to_end(env):
    r = cli(env, "Why is spider silk so tough?", "-r", "2", "--max-tokens", "12", "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert "assembling the default model" in r.stderr
    assert r.stdout.strip()
    again = cli(env, "Why is bone tough?", "--max-tokens", "4", "-q")
    assert again.returncode == 0 and "assembling" not in again.stderr


def test_models_lists_backends_offline(env):
    r = cli(env, "models", "--json")
    info = json.loads(r.stdout)
    assert {b["name"] for b in info["backends"]} >= {"llamacpp", "transformers", "openai"}
    assert info["default"]["installed"] is True


BAD = {
    "missing model file": (["q", "--model", "./nope/missing.gguf"], "model file not found"),
    "hub id not cached": (["q", "--model", "someorg/some-model"], "not in the Hugging Face cache"),
    "empty question": (["ask", "  "], "question is empty"),
    "no question": (["ask"], "no question given"),
    "zero rounds": (["q", "--recursive", "0"], "--recursive must be at least 1"),
    "unreachable server": (["q", "--model", "http://127.0.0.1:9/v1"], "cannot reach the server"),
    "unknown mode": (["q", "--mode", "dream", "--model", "{tiny}"], "unknown mode"),
    "unknown template": (["q", "--chat-template", "nope", "--model", "{tiny}"], "neither a known name nor a file"),
    "prompt too long": (["q " * 120, "--model", "{tiny}", "--ctx", "64"], "context window is 64"),
    "not a gguf": (["q", "--model", "{notgguf}"], "not a GGUF file"),
    "truncated gguf": (["q", "--model", "{truncated}"], "truncated"),
    "unknown gguf arch": (["q", "--model", "{oddarch}"], "frobnicator"),
    "unknown hf arch": (["q", "--model", "{oddhf}"], "unknown architecture 'frobnicator'"),
    "missing rag store": (["q", "--model", "{tiny}", "--rag", "nope.db"], "RAG store not found"),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, gemma_gguf, tiny_llama):
    d = tmp_path_factory.mktemp("bad")
    (d / "notgguf.gguf").write_text("hello")
    with open(gemma_gguf, "rb") as src:
        (d / "truncated.gguf").write_bytes(src.read(3_000_000))
    gguf_with_arch(d / "oddarch.gguf", "frobnicator")
    (d / "oddhf").mkdir()
    (d / "oddhf" / "config.json").write_text(json.dumps({"model_type": "frobnicator"}))
    return {
        "tiny": str(tiny_llama),
        "notgguf": str(d / "notgguf.gguf"),
        "truncated": str(d / "truncated.gguf"),
        "oddarch": str(d / "oddarch.gguf"),
        "oddhf": str(d / "oddhf"),
    }


SLOW_CASES = {"prompt too long", "unknown hf arch"}  # these two import torch in the child (seconds); the rest fail before


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CASES else c for c in sorted(BAD)])
def test_bad_input_is_one_clear_line(env, bad_files, case):
    args, expected = BAD[case]
    r = cli(env, *[a.format(**bad_files) for a in args])
    assert r.returncode in (1, 2), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], r.stderr


def test_debug_shows_the_traceback(env):
    r = cli(env, "q", "--model", "./nope/missing.gguf", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr
