"""Baseline samples decoded as one batch (``eval --batch``) on a tiny llama.cpp model: the same samples, tokens and
records as one at a time, actually batched, and the bench script's smoke run.

The model is the tiny random Llama with the thinking tags, as an f32 GGUF (llama.cpp's batched and single decodes
agree bit for bit there; see ``KVSlots``). Samples use seeded sampling at the sample temperature: each call's
sampler is seeded when it is built (``LlamaCppBackend.token_stream``), so a sample's draws do not depend on what
else is in the batch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from preflexor_local.backends.llamacpp import LlamaCppBackend
from preflexor_local.config import LoadOptions, Recursion, Sampling
from preflexor_local.eval import EvalSettings, evaluate
from preflexor_local.eval.conditions import ItemRunner, Models
from preflexor_local.eval.questions import QuestionSet, parse_question

ROOT = Path(__file__).resolve().parent.parent
SAMPLING = Sampling(temperature=0, max_tokens=8, seed=0)
SETTINGS = dict(rounds="1,2", baselines="self-consistency,best-of-n", selector="key", max_samples=8)


pytestmark = pytest.mark.slow  # llama.cpp models loaded and run, a bench script


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama_gguf) -> Path:
    return tiny_llama_gguf


def questions():
    rows = [
        {"id": "c1", "question": "Which is tougher?", "kind": "choice", "choices": ["glass", "nacre"], "answer": "B"},
        {"id": "n1", "question": "What is 2 plus 2?", "kind": "numeric", "answer": 4},
        {"id": "c2", "question": "Which is lighter?", "kind": "choice", "choices": ["wood", "steel", "lead"], "answer": "A"},
    ]
    return [parse_question(json.dumps(r)) for r in rows]


def without_timings(obj):
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if k not in ("seconds", "ttft", "cached_tokens")}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def pool_free(line: dict) -> dict:
    """An item line without how its samples were launched (batches differ by design, nothing else may)."""
    line = without_timings(line)
    for rec in line["records"]:
        for k in ("launched", "batches", "overshoot_tokens"):
            rec.pop(k, None)
    return line


def test_batched_samples_are_the_samples_drawn_one_at_a_time(tiny_gguf):
    alone = LlamaCppBackend(tiny_gguf, LoadOptions(threads=1))
    try:
        r = ItemRunner(Models(alone, alone, alone), EvalSettings(**SETTINGS, batch=4), SAMPLING, Recursion(), None)
        assert r.batch == 1  # no batch decoder: one at a time, whatever --batch says
        expected = [r.run(q) for q in questions()]
    finally:
        alone.close()
    batched = LlamaCppBackend(tiny_gguf, LoadOptions(threads=1, parallel=4))
    try:
        r = ItemRunner(Models(batched, batched, batched), EvalSettings(**SETTINGS, batch=4), SAMPLING, Recursion(), None)
        assert r.batch == 4
        got = [r.run(q) for q in questions()]
        dec = batched.batcher
        assert dec.steps and dec.batched_tokens / dec.steps > 1.5  # decode steps carried several samples' tokens
    finally:
        batched.close()
    assert [pool_free(x) for x in got] == [pool_free(x) for x in expected]
    for line in got:
        sc = next(rec for rec in line["records"] if rec["condition"] == "self-consistency")
        assert sc["samples"] >= 2 and max(sc["batches"]) > 1  # samples really were launched together
        assert sc["launched"] == sum(sc["batches"]) and sc["launched"] - sc["samples"] < 4
        assert (sc["overshoot_tokens"] > 0) == (sc["launched"] > sc["samples"])  # dropped samples' tokens are counted
        drawn_alone = next(rec for rec in expected[got.index(line)]["records"] if rec["condition"] == "self-consistency")
        assert set(drawn_alone["batches"]) == {1} and drawn_alone["overshoot_tokens"] == 0
        # the tokens are the samples' own, counted from every call (thinking and answer), and equal one at a time
        assert [s["tokens"] for s in sc["sample_records"]] == [s["tokens"] for s in drawn_alone["sample_records"]]
        assert all(s["tokens"] == sum(c["completion_tokens"] for c in s["transcript"]["rounds"][0]["calls"]) for s in sc["sample_records"])


def test_evaluate_loads_the_model_with_parallel_slots_for_the_samples(tiny_gguf, tmp_path):
    qset = QuestionSet(source="t", path="t", sha256="0", questions=tuple(questions()[:2]))
    reports = {}
    for batch in (1, 3):
        reports[batch] = evaluate(
            qset,
            tmp_path / f"b{batch}",
            str(tiny_gguf),
            settings=EvalSettings(**SETTINGS, batch=batch),
            sampling=SAMPLING,
            options=LoadOptions(threads=1),
            progress=False,
        )
    one, three = reports[1], reports[3]
    sc = [it for it in three["items"] if it["condition"] == "self-consistency"]
    assert all(it["launched"] >= it["samples"] for it in sc) and any(max(it["batches"]) > 1 for it in sc)
    assert one["summary"]["conditions"]["self-consistency"]["mean_launched"] == one["summary"]["conditions"]["self-consistency"]["mean_samples"]
    strip = lambda items: [{k: v for k, v in it.items() if k not in ("launched", "batches", "overshoot_tokens")} for it in without_timings(items)]  # noqa: E731
    assert strip(one["items"]) == strip(three["items"])  # the same figures whatever the batch
    assert one["settings"] == three["settings"]  # --batch changes how fast, not what is measured: a resume may change it


def test_bench_smoke(tiny_gguf, tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "eval_batch.py"),
            "--model",
            str(tiny_gguf),
            "--limit",
            "2",
            "--rounds",
            "2",
            "--max-tokens",
            "6",
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "self-consistency" in out and "best-of-n" in out and "items/min" in out
    ratio = [line for line in out.splitlines() if line.startswith("ratio")]
    assert len(ratio) == 1 and float(ratio[0].split()[-1].rstrip("x")) > 0
    assert "same kept samples: 2 of 2 items" in out
