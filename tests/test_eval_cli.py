"""``preflexor-local eval`` as a user runs it, on the tiny random Llama: files, JSON, resume after SIGKILL, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from preflexor_local.backends import load
from preflexor_local.config import Recursion, Sampling
from preflexor_local.eval import EvalSettings
from preflexor_local.eval.conditions import ItemRunner, Models
from preflexor_local.eval.judge import PairwiseJudge
from preflexor_local.eval.questions import load_questions

BIN = Path(sys.executable).with_name("preflexor-local")
FAST = ["--max-tokens", "6", "--temperature", "0", "--rounds", "1,2"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    # One torch thread: on a busy 2-core machine more threads spin against each other (10x slower here).
    e.update(PREFLEXOR_HOME=str(tmp_path_factory.mktemp("home")), HF_HUB_OFFLINE="1", NO_COLOR="1", OMP_NUM_THREADS="1")
    e.pop("PREFLEXOR_DEBUG", None)
    return e


def cli(env, *args, timeout=300):
    return subprocess.run([str(BIN), "eval", *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout)


def write_questions(path: Path, n: int, open_items: int = 0) -> Path:
    rows = []
    for i in range(n):
        if i % 2:
            rows.append({"id": f"q{i}", "question": f"What is {i} plus one?", "kind": "numeric", "answer": i + 1})
        else:
            rows.append({"id": f"q{i}", "question": "Which is tougher?", "kind": "choice", "choices": ["glass", "nacre"], "answer": "B"})
    rows += [{"id": f"open{i}", "question": "Why is nacre tough?", "kind": "open", "reference": "Tablets slide."} for i in range(open_items)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_end_to_end_json_report_files_and_judge(env, tiny_llama, tmp_path):
    qfile = write_questions(tmp_path / "q.jsonl", 3, open_items=1)
    out = tmp_path / "out"
    judged = ("--model", tiny_llama, "--judge", tiny_llama, "--baselines", "self-consistency,best-of-n", "--judge-max-tokens", "4")
    r = cli(env, qfile, *judged, *FAST, "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report == json.loads((out / "report.json").read_text())
    assert report["conditions"] == ["rounds-1", "rounds-2", "self-consistency", "best-of-n"]
    assert report["question_set"]["evaluated"] == 4 and report["models"]["reasoner"]["backend"] == "transformers"
    assert report["settings"]["sampling"]["temperature"] == 0 and report["settings"]["sampling"]["seed"] == 0
    items = report["items"]
    assert {(it["id"], it["condition"]) for it in items} >= {("q0", "rounds-1"), ("q0", "rounds-2"), ("q0", "best-of-n"), ("open0", "rounds-2")}
    opened = next(it for it in items if it["id"] == "open0" and it["condition"] == "rounds-2")
    assert opened["verdict"] in ("win", "tie", "loss") and [v["order"] for v in opened["judge"]["verdicts"]] == ["first-second", "second-first"]
    assert all("raw" in v for v in opened["judge"]["verdicts"])
    assert all({"prediction", "correct", "final_answer", "tokens", "seconds", "temperature"} <= set(it) for it in items)
    assert all(("seed" in it) != ("seeds" in it) for it in items)  # rounds have one seed, baselines one per sample
    for name in ("items.jsonl", "settings.json", "report.md", "report.png"):
        assert (out / name).stat().st_size > 0
    assert "item/s" in r.stderr or "s/item" in r.stderr  # the progress bar's rate
    assert "Traceback" not in r.stderr

    # the same folder with other settings is refused in one line; a finished run reruns without work
    r2 = cli(env, qfile, *judged, "--max-tokens", "6", "--temperature", "0.5", "--rounds", "1,2", "-o", out)
    assert r2.returncode == 2 and "holds a run with other settings: sampling.temperature: 0.0 → 0.5" in r2.stderr
    assert "Traceback" not in r2.stderr
    lines = (out / "items.jsonl").read_text()
    r3 = cli(env, qfile, *judged, *FAST, "-o", out)
    assert r3.returncode == 0 and "| rounds-2 |" in r3.stdout and (out / "items.jsonl").read_text() == lines


@pytest.mark.slow
def test_killed_run_resumes_and_counts_every_item_once(env, tiny_llama, tmp_path):
    n = 24
    qfile = write_questions(tmp_path / "q.jsonl", n)
    out = tmp_path / "out"
    args = [str(BIN), "eval", str(qfile), "--model", str(tiny_llama), *FAST, "--baselines", "none", "-o", str(out)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    items = out / "items.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if items.is_file() and items.read_bytes().count(b"\n") >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = items.read_bytes().count(b"\n")
    assert 2 <= finished < n
    with open(items, "ab") as f:  # as if the kill had landed mid-write
        f.write(b'{"id": "q23", "kind": "numeric", "rec')

    r = subprocess.run([*args, "--concurrency", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "--concurrency 2 ignored" in r.stderr  # in-process models run one item at a time
    ids = [json.loads(line)["id"] for line in items.read_text().splitlines()]
    assert sorted(ids) == sorted(f"q{i}" for i in range(n))  # every item once: none lost, none twice, no torn line
    report = json.loads((out / "report.json").read_text())
    pairs = [(it["id"], it["condition"]) for it in report["items"]]
    assert len(pairs) == len(set(pairs)) == 2 * n
    assert all(c["items"] == n for c in report["summary"]["conditions"].values())
    assert any(f"resumed: {finished} of {n}" in note for note in report["notes"])


BAD = {
    "bad question line": (["{qbad}", "--model", "{tiny}"], "qbad.jsonl:2: 'kind' must be one of"),
    "missing question file": (["nope.jsonl"], "question file not found: nope.jsonl"),
    "unknown builtin": (["builtin:nope"], "no built-in question set named 'nope'"),
    "zero rounds": (["builtin:materials", "--rounds", "0,3"], "--rounds values must be at least 1"),
    "unknown baseline": (["builtin:materials", "--baselines", "majority"], "unknown --baselines value 'majority'"),
    "judge selector without judge": (
        ["builtin:materials", "--baselines", "best-of-n", "--selector", "judge", "-o", "{tmp}/x"],
        "--selector judge needs --judge",
    ),
    "open only without judge": (["{qopen}", "-o", "{tmp}/y"], "no questions left to evaluate"),
    "missing store": (["builtin:materials", "--rag", "{tmp}/none.db", "-o", "{tmp}/z"], "RAG store not found"),
    "batch out of range": (["builtin:materials", "--batch", "0"], "--batch must be at least 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_clear_line(env, tiny_llama, tmp_path, case):
    (tmp_path / "qbad.jsonl").write_text('{"id": 1, "question": "q", "kind": "exact", "answer": "x"}\n{"id": 2, "question": "q", "kind": "mcq"}\n')
    (tmp_path / "qopen.jsonl").write_text('{"id": 1, "question": "Why?", "kind": "open"}\n')
    fill = {"qbad": tmp_path / "qbad.jsonl", "qopen": tmp_path / "qopen.jsonl", "tiny": tiny_llama, "tmp": tmp_path}
    args, expected = BAD[case]
    r = cli(env, *[a.format(**fill) for a in args])
    assert r.returncode in (1, 2), (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == ""
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], r.stderr


@pytest.mark.slow
def test_temperature_zero_runs_repeat_exactly(tiny_llama):
    b = load(str(tiny_llama))
    try:
        questions = load_questions("builtin:materials").questions[:2]
        settings = EvalSettings(rounds="1,2", baselines="self-consistency,best-of-n", max_samples=3, judge_max_tokens=3)
        sampling = Sampling(temperature=0, max_tokens=5)

        def run_once():
            r = ItemRunner(Models(b, b, b, PairwiseJudge(b, max_tokens=3)), settings, sampling, Recursion(), None)
            return [strip_timings(r.run(x)) for x in questions]

        assert run_once() == run_once()
    finally:
        b.close()


def strip_timings(obj):
    if isinstance(obj, dict):
        return {k: strip_timings(v) for k, v in obj.items() if k not in ("seconds", "ttft", "cached_tokens")}
    if isinstance(obj, list):
        return [strip_timings(v) for v in obj]
    return obj
