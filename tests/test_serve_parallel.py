"""``serve --parallel N``: N requests run at once on one GGUF model, their tokens decoded in one batch."""

from __future__ import annotations

import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from serve_fixtures import BIN, start_server

pytestmark = pytest.mark.slow  # every test here starts `preflexor-local serve` (a process that loads a model)


@pytest.fixture(scope="module")
def server(gemma_gguf, serve_env, tmp_path_factory):
    s = start_server(
        ["--model", str(gemma_gguf), "--ctx", "1024", "--temperature", "0", "--parallel", "2", "--max-queue", "4"], tmp_path_factory.mktemp("p"), serve_env
    )
    yield s
    assert s.stop() == 0, s.log()[-2000:]


def ask(server, i: int, max_tokens: int = 24) -> str:
    c = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=90)
    r = c.chat.completions.create(model="preflexor", max_tokens=max_tokens, messages=[{"role": "user", "content": f"Name tough material number {i}."}])
    assert r.choices[0].finish_reason in ("stop", "length")
    return r.choices[0].message.content


def test_two_requests_run_at_once_and_a_third_waits(server):
    h = server.health()
    assert h["parallel"] == 2 and h["running"] == 0
    seen = {"running": 0, "waiting": 0}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            h = server.health()
            seen["running"] = max(seen["running"], h["running"])
            seen["waiting"] = max(seen["waiting"], h["waiting"])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda i: ask(server, i), range(3)))
    finally:
        stop.set()
        watcher.join()
    assert all(isinstance(a, str) for a in answers)
    assert seen["running"] == 2 and seen["waiting"] >= 1  # two lanes busy together, the third request queued
    assert server.health()["served"] >= 3 and server.health()["running"] == 0
    assert "2 at once" in server.log()


def test_parallel_refused_by_name_for_a_model_that_cannot_batch(tiny_llama, serve_env):
    r = subprocess.run(
        [str(BIN), "serve", "--port", "0", "--model", str(tiny_llama), "--parallel", "2"], env=serve_env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2, r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("error: --parallel 2 needs GGUF (llama.cpp) or OpenAI-compatible models;") and "transformers" in first
    assert "Traceback" not in r.stderr
