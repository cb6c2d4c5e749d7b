"""`serve --rag STORE`: the grounded critique, its citations and the early stop show in the streamed round labels and
in the transcript a client asks for."""

from __future__ import annotations

import json
import signal

import httpx
import pytest
from serve_fixtures import server_env, sse_events, start_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def grounded_server(gemma_gguf, tmp_path_factory):
    from preflexor_local.rag import IndexConfig, index_folder

    docs = tmp_path_factory.mktemp("docs")
    (docs / "silk.md").write_text("# Silk\n\nSpider silk is tough because stiff beta-sheet crystals sit in a stretchy amorphous protein matrix.\n")
    (docs / "bone.md").write_text("# Bone\n\nBone is a composite of hydroxyapatite platelets and collagen fibrils.\n")
    store = docs.parent / "store.db"
    index_folder([docs], store, IndexConfig(progress=False))
    env = server_env(tmp_path_factory.mktemp("home"))
    args = ["--model", str(gemma_gguf), "--ctx", "2048", "--temperature", "0", "--max-tokens", "24", "--rag", str(store), "-k", "1", "--evidence-k", "2"]
    s = start_server(args, tmp_path_factory.mktemp("serve"), env)
    yield s
    assert s.stop(signal.SIGINT) == 0, s.log()[-2000:]


def test_a_grounded_request_streams_the_evidence_and_records_passages_and_the_stop(grounded_server):
    body = {
        "messages": [{"role": "user", "content": "Why is spider silk so tough?"}],
        "stream": True,
        "preflexor": {"rounds": 2, "transcript": True},
    }
    with httpx.stream("POST", grounded_server.url + "/chat/completions", json=body, timeout=300) as r:
        assert r.status_code == 200
        events = [json.loads(payload) for kind, payload in sse_events(r.iter_lines()) if kind == "data" and payload != "[DONE]"]
    reasoning = "".join((c["delta"].get("reasoning_content") or "") for e in events for c in e.get("choices", []))
    assert "[round 1 · critic · evidence]" in reasoning and "[1] (silk.md" in reasoning
    transcript = next(e["preflexor"]["transcript"] for e in events if e.get("preflexor"))
    r1 = transcript["rounds"][0]
    assert r1["passages"] and r1["passages"][0]["n"] == 1 and "beta-sheet" in " ".join(p["text"] for p in r1["passages"])
    assert isinstance(r1["cited"], list) and r1["verdict"] in (None, "fix", "nothing to fix")
    assert transcript["context"] and "silk.md" in transcript["context"][0]["source"]  # the reasoner's context too
    assert transcript["stop_reason"] in ("rounds", "nothing_to_fix", "answers_agree")
    if transcript["stop_reason"] != "rounds":
        assert "· engine · stop]" in reasoning


def test_serve_with_a_missing_store_is_refused_in_one_line(tmp_path):
    import subprocess

    from serve_fixtures import BIN

    env = server_env(tmp_path / "home")
    done = subprocess.run([str(BIN), "serve", "--port", "0", "--rag", str(tmp_path / "missing.db")], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0 and "RAG store not found" in done.stderr and "Traceback" not in done.stderr
