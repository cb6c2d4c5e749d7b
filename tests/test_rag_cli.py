"""The `index` commands end to end: a real `index add` process over bad files, errors as one line + hint, --json output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from rag_fixtures import BONE, NACRE, make_bad_files

from preflexor_local.app.cli import cli
from preflexor_local.rag.embed import resolve_model


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PREFLEXOR_HOME": str(home)}
    cmd = [sys.executable, "-m", "preflexor_local", *args]
    if os.geteuid() == 0:  # root reads mode-000 files: drop the capabilities that let it, so the permission case is real
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *cmd]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_index_add_skips_every_bad_file_with_one_line_each(tmp_path):
    bad = tmp_path / "bad"
    expected = make_bad_files(bad)
    good = tmp_path / "good"
    good.mkdir()
    (good / "nacre.md").write_text(NACRE)
    db = tmp_path / "s.db"
    res = _cli("index", "add", str(bad), str(good), "--store", str(db), "--json", home=tmp_path / "home")
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    report = json.loads(res.stdout)
    assert report["added"] == 2 and report["ignored"] == 1
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(expected)
    for name, word in expected.items():
        assert word.lower() in reasons[name].lower(), (name, reasons[name])
        lines = [ln for ln in res.stderr.splitlines() if f"skipped {bad / name}:" in ln]
        assert len(lines) == 1, (name, res.stderr)
    assert db.exists()


def test_model_mismatch_is_one_line_and_a_hint_before_any_model_loads(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bone.txt").write_text(BONE)
    db = tmp_path / "s.db"
    runner = CliRunner()
    res = runner.invoke(cli, ["index", "add", str(docs), "--store", str(db), "--quiet"])
    assert res.exit_code == 0, res.output
    other = tmp_path / "bge-tiny"
    shutil.copytree(resolve_model(None).path, other, copy_function=os.symlink)
    res = _cli("index", "add", str(docs), "--store", str(db), "--embed-model", str(other), home=tmp_path / "home")
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 2 and "Traceback" not in res.stderr
    assert err[0] == f"error: {db} was indexed with the embedding model 'all-MiniLM-L6-v2' (384-d), not 'bge-tiny'"
    assert err[1].startswith("  hint: ")
    res = _cli("index", "search", "anything", "--store", str(tmp_path / "missing.db"), home=tmp_path / "home")
    assert res.returncode == 1 and res.stderr.startswith("error: no store at")


def test_search_stats_remove_json(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "bone.txt").write_text(BONE)
    (docs / "nacre.md").write_text(NACRE)
    db = str(tmp_path / "s.db")
    runner = CliRunner()
    assert runner.invoke(cli, ["index", "add", str(docs), "-s", db, "-q"]).exit_code == 0
    res = runner.invoke(cli, ["index", "search", "mother of pearl toughness", "-s", db, "-k", "2", "--json"])
    hits = json.loads(res.stdout)
    assert [Path(h["path"]).name for h in hits] == ["nacre.md", "bone.txt"]
    assert set(hits[0]) == {"chunk_id", "text", "path", "span", "score"}
    res = runner.invoke(cli, ["index", "search", "mother of pearl toughness", "-s", db, "-k", "1"])
    assert res.exit_code == 0 and "nacre.md" in res.stdout and "lines 1-" in res.stdout
    stats = json.loads(runner.invoke(cli, ["index", "stats", "-s", db, "--json", "--documents"]).stdout)
    assert stats["documents"] == 2 and stats["embed_model"] == "all-MiniLM-L6-v2" and stats["dimension"] == 384
    assert sorted(Path(d["path"]).name for d in stats["documents_list"]) == ["bone.txt", "nacre.md"]
    res = runner.invoke(cli, ["index", "remove", str(docs / "bone.txt"), "-s", db, "--json"])
    assert json.loads(res.stdout) == {"removed": [str(docs / "bone.txt")]}
    res = runner.invoke(cli, ["index", "stats", "-s", db])
    assert res.exit_code == 0 and "documents  1" in res.stdout and "all-MiniLM-L6-v2 (384-d)" in res.stdout
