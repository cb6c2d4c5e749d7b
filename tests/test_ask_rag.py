"""`ask --rag`: retrieved chunks become cited context for the reasoner and are recorded in the transcript."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_ask_with_rag_context(tmp_path, tiny_llama):
    from preflexor_local.rag import IndexConfig, index_folder

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "nacre.md").write_text("# Nacre\n\nNacre stops cracks with staggered aragonite tablets glued by thin protein layers.\n")
    (docs / "engines.txt").write_text("Diesel engines compress air until the injected fuel ignites without a spark.\n")
    store = tmp_path / "bio.db"
    index_folder([docs], store, IndexConfig(progress=False))

    env = dict(os.environ, PREFLEXOR_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1")
    r = subprocess.run(
        [
            str(Path(sys.executable).with_name("preflexor-local")),
            "ask",
            "How does nacre stop cracks?",
            "--rag",
            str(store),
            "-k",
            "1",
            "--model",
            str(tiny_llama),
            "--json",
            "-q",
            "--max-tokens",
            "4",
            "--temperature",
            "0",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    t = json.loads(r.stdout)
    assert len(t["context"]) == 1
    chunk = t["context"][0]
    assert "aragonite" in chunk["text"] and "nacre.md" in chunk["source"]
