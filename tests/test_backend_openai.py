"""The OpenAI-compatible backend against a real server on loopback: llama-cpp-python's own, serving Gemma."""

import http.server
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from preflexor_local.backends import GenerationRequest, load
from preflexor_local.config import LoadOptions, Recursion, Sampling
from preflexor_local.errors import ServerError
from preflexor_local.reasoning.engine import Engine

GREEDY = Sampling(temperature=0, max_tokens=12, seed=0)
MSGS = [{"role": "user", "content": "Name a tough natural material."}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(gemma_gguf, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("server") / "server.log", "w+")  # a pipe would fill up and stall the server
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "preflexor_local.backends.llamacpp_load",  # llama_cpp.server under our AMX verdict: it cannot crash where we do not
            "--model",
            str(gemma_gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--model_alias",
            "gemma-test",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail("llama_cpp.server exited: " + log.read()[-2000:])
        try:
            if httpx.get(url + "/models", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not come up in 90 s")
    yield url
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.mark.slow
def test_completions_mode_with_our_template_prefills_exactly(server):
    b = load(server, LoadOptions(chat_template="plain"))
    assert b.mode == "completions" and b.name == "gemma-test"
    gen = b.generate(GenerationRequest(messages=MSGS, prefill="The toughest one is", sampling=GREEDY))
    assert gen.text.strip() and gen.completion_tokens > 0
    assert gen.finish_reason in ("stop", "length")
    b.close()


@pytest.mark.slow
def test_named_model_and_chat_mode(server):
    b = load(server + "#gemma-test")
    assert b.mode == "chat"  # this server publishes no template, so the trailing-assistant route is used
    chunks = []
    gen = b.generate(GenerationRequest(messages=MSGS, prefill="Bone", sampling=GREEDY), on_text=chunks.append)
    assert "".join(chunks) == gen.text and gen.completion_tokens > 0
    b.close()


@pytest.mark.slow
def test_engine_rounds_over_http(server):
    b = load(server, LoadOptions(chat_template="plain"))
    t = Engine(b, sampling=GREEDY, recursion=Recursion(rounds=2)).run("Why is nacre tough?")
    assert len(t.rounds) == 2 and t.models["reasoner"]["backend"] == "openai"
    assert t.rounds[1].calls[0].channel == "answer"
    b.close()


@pytest.mark.slow
def test_wrong_model_name_lists_what_is_served(server):
    with pytest.raises(ServerError, match="no-such-model") as err:
        load(server + "#no-such-model")
    assert "gemma-test" in err.value.hint


def test_unreachable_server_is_one_clear_error():
    with pytest.raises(ServerError, match="cannot reach"):
        load(f"http://127.0.0.1:{free_port()}/v1")


class Recorder(http.server.BaseHTTPRequestHandler):
    """A loopback server that keeps each request body and answers with one streamed word."""

    bodies: list[dict] = []

    def do_GET(self):
        self._send(200, "application/json", json.dumps({"data": [{"id": "rec"}]}).encode())

    def do_POST(self):
        Recorder.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        event = {"choices": [{"text": "ok", "finish_reason": "stop"}]}
        self._send(200, "text/event-stream", f"data: {json.dumps(event)}\n\ndata: [DONE]\n\n".encode())

    def _send(self, status, kind, payload):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_sampling_settings_travel_even_when_off():
    """A server fills an absent field with its own default (serve's DRY 0.8, llama-server's top_k 40): "off" is sent."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        b = load(f"http://127.0.0.1:{srv.server_address[1]}/v1", LoadOptions(chat_template="plain"))
        off = Sampling(top_k=0, min_p=0, repeat_penalty=1.0, dry_multiplier=0)
        on = Sampling(top_k=7, min_p=0.05, repeat_penalty=1.2, dry_multiplier=0.8, dry_base=2, dry_allowed_length=3)
        for sampling in (off, on):
            assert b.generate(GenerationRequest(messages=MSGS, sampling=sampling)).text == "ok"
        b.close()
    finally:
        srv.shutdown()
    keys = ("top_k", "min_p", "repeat_penalty", "repetition_penalty", "dry_multiplier", "dry_base", "dry_allowed_length")
    sent = [tuple(body.get(k) for k in keys) for body in Recorder.bodies]
    assert sent == [(0, 0.0, 1.0, 1.0, 0.0, 1.75, 2), (7, 0.05, 1.2, 1.2, 0.8, 2.0, 3)]


@pytest.mark.slow
def test_a_restart_stop_is_scanned_locally(server):
    from restarts import check_restart_stop

    b = load(server, LoadOptions(chat_template="plain"))
    request = GenerationRequest(messages=MSGS, prefill="Tough natural materials:\n1. Bone\n2.", sampling=Sampling(temperature=0, max_tokens=40, seed=0))
    check_restart_stop(b, request)
    b.close()
