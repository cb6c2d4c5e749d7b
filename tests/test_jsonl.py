"""The durable JSONL appender, and `data generate` resuming a file a kill left torn."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tiny_model import CORPUS
from train_fixtures import fast_generation, generate_argv

from preflexor_local.jsonl import Appender, append_jsonl, cut_torn_tail, whole_rows
from preflexor_local.train.data import load_pairs


def test_a_torn_tail_is_cut_kept_beside_the_file_and_noted_once(tmp_path, capsys):
    path = tmp_path / "items.jsonl"
    path.write_bytes(b'{"id": "a"}\n{"id": "b"}\n{"id": "c", "te')  # killed while writing c
    assert [r["id"] for r in whole_rows(path)] == ["a", "b"]
    with Appender(path) as out:
        out.append({"id": "c"})
        out.append({"id": "d"})
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b", "c", "d"]
    assert (tmp_path / "items.jsonl.torn").read_bytes() == b'{"id": "c", "te\n'  # the cut bytes are never lost
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "torn line (15 bytes" in err and "items.jsonl.torn" in err
    append_jsonl(path, [{"id": "e"}])  # a whole file: nothing cut, nothing said
    assert capsys.readouterr().err == "" and len(path.read_text().splitlines()) == 5


def test_cutting_keeps_earlier_torn_bytes_and_handles_edge_files(tmp_path):
    path = tmp_path / "p.jsonl"
    assert cut_torn_tail(path) == 0  # no file
    path.write_bytes(b"")
    assert cut_torn_tail(path) == 0
    path.write_bytes(b'{"half')  # torn first line: the file becomes empty
    assert cut_torn_tail(path, quiet=True) == 6 and path.read_bytes() == b""
    path.write_bytes(b'{"a": 1}\n' + b"x" * 100_000)  # a torn line longer than the read block
    assert cut_torn_tail(path, quiet=True) == 100_000 and path.read_bytes() == b'{"a": 1}\n'
    assert (tmp_path / "p.jsonl.torn").read_bytes() == b'{"half\n' + b"x" * 100_000 + b"\n"


def _generate(tmp_path, tiny_llama, n: int) -> list[str]:
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n\n".join(CORPUS))
    return [sys.executable, "-m", "preflexor_local", *generate_argv(corpus, tiny_llama, tmp_path / "pairs.jsonl", n, *fast_generation(12, 12, k_random=2))]


@pytest.mark.slow
def test_data_generate_killed_mid_run_then_rerun_finishes_the_file_without_loss_or_repeats(tmp_path, tiny_llama):
    """Before the fix the rerun appended N more pairs onto the torn line: the glued line made the file unreadable."""
    out = tmp_path / "pairs.jsonl"
    cmd = _generate(tmp_path, tiny_llama, 5)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not (out.is_file() and out.read_bytes().count(b"\n") >= 2):
        time.sleep(0.05)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    whole = out.read_bytes()[: out.read_bytes().rfind(b"\n") + 1]
    kept = [json.loads(line) for line in whole.splitlines()]
    assert 2 <= len(kept) <= 5
    kept = kept[:2]
    # Where the kill landed mid-write: the file ends in the first part of a row.
    out.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in kept) + json.dumps(kept[0]).encode()[:40])

    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "note:" in done.stderr and "torn line (40 bytes" in done.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and rows[:2] == kept  # every whole row kept, the file finished to -n
    assert len({r["prompt"] for r in rows}) == 5 and len({r["meta"]["seed"] for r in rows}) == 5  # none repeated
    assert len(load_pairs(out)) == 5  # training reads every row
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and len(out.read_text().splitlines()) == 5  # a full file: nothing to do
