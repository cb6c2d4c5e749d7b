"""`preflexor-local serve` as clients use it: the real server process on loopback, serving the Gemma 3 270M GGUF,
called through the openai SDK, simonw's llm, raw SSE over httpx and plain HTTP."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from serve_fixtures import BIN, sse_events, start_server

openai = pytest.importorskip("openai")

Q = [{"role": "user", "content": "Why is spider silk so tough?"}]
LONG = {"max_tokens": 400, "temperature": 0.9, "preflexor": {"rounds": 3}}  # many seconds of work on this model


@pytest.fixture(scope="module")
def server(gemma_gguf, serve_env, tmp_path_factory):
    s = start_server(
        ["--model", str(gemma_gguf), "--ctx", "2048", "--temperature", "0", "--max-tokens", "8", "--keepalive", "0.2", "--max-queue", "8"],
        tmp_path_factory.mktemp("serve"),
        serve_env,
    )
    yield s
    assert s.stop(signal.SIGINT) == 0, s.log()[-2000:]  # Ctrl-C: a clean exit, not 130


@pytest.fixture(scope="module")
def keyed(gemma_gguf, serve_env, tmp_path_factory):
    """A second server: a key is required and nothing may wait (--max-queue 0)."""
    s = start_server(
        ["--model", str(gemma_gguf), "--ctx", "2048", "--max-tokens", "8", "--max-queue", "0", "--api-key", "s3cret"],
        tmp_path_factory.mktemp("keyed"),
        serve_env,
    )
    yield s
    s.stop()


def client(server, **kw):
    return openai.OpenAI(base_url=server.url, api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=120, **kw)


@pytest.mark.slow
def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["preflexor"]
    assert models.data[0].model_extra["preflexor"]["models"]["reasoner"]["backend"] == "llamacpp"
    h = server.health()
    assert h["status"] == "ok" and h["max_queue"] == 8


@pytest.mark.slow
def test_two_rounds_whole_answer_with_reasoning_fields_and_honest_usage(server):
    r = client(server).chat.completions.create(model="preflexor", messages=Q, extra_body={"preflexor": {"rounds": 2, "transcript": True}})
    msg, t = r.choices[0].message, r.model_extra["preflexor"]["transcript"]
    assert msg.content == t["final_answer"] and msg.content.strip()
    reasoning = msg.model_extra["reasoning_content"]
    assert reasoning == msg.model_extra["reasoning"]
    for label in (
        "[round 1 · thinking]",
        "[round 1 · answer]",
        "[round 1 · critic · critique]",
        "[round 1 · critic · improved thinking]",
        "[round 2 · answer]",
    ):
        assert label in reasoning
    assert reasoning.index("[round 1 · thinking]") < reasoning.index("[round 2 · answer]")
    assert len(t["rounds"]) == 2 and t["integrated"]
    calls = [c for rnd in t["rounds"] for c in rnd["calls"]] + [t["integration"]]
    assert r.usage.prompt_tokens == sum(c["prompt_tokens"] for c in calls) > 0
    assert r.usage.completion_tokens == sum(c["completion_tokens"] for c in calls)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.completion_tokens_details.reasoning_tokens == r.usage.completion_tokens - t["integration"]["completion_tokens"]


@pytest.mark.slow
def test_stream_reasoning_then_content_then_usage(server):
    c = client(server)
    body = {"preflexor": {"rounds": 1, "transcript": True}}
    chunks = list(c.chat.completions.create(model="preflexor", messages=Q, extra_body=body, stream=True, stream_options={"include_usage": True}))
    kinds, reasoning, content = [], "", ""
    for ch in chunks[:-1]:
        d = ch.choices[0].delta
        extra = d.model_extra or {}
        if extra.get("reasoning_content"):
            assert extra["reasoning"] == extra["reasoning_content"]
            reasoning += extra["reasoning_content"]
            kinds.append("r")
        if d.content:
            content += d.content
            kinds.append("c")
    assert "r" in kinds and "c" in kinds and kinds.index("c") > max(i for i, k in enumerate(kinds) if k == "r")
    end = chunks[-2]
    assert end.choices[0].finish_reason in ("stop", "length")
    t = end.model_extra["preflexor"]["transcript"]
    assert content == t["final_answer"]  # the streamed answer is the transcript's, trimmed the same way
    assert reasoning.startswith("[round 1 · thinking]\n" + t["rounds"][0]["thinking"][:10])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == t["totals"]["completion_tokens"]


@pytest.mark.slow
def test_reasoning_effort_none_hides_the_reasoning_and_runs_one_round(server):
    r = client(server).chat.completions.create(model="preflexor", messages=Q, reasoning_effort="none", extra_body={"preflexor": {"transcript": True}})
    assert "reasoning_content" not in (r.choices[0].message.model_extra or {})
    assert len(r.model_extra["preflexor"]["transcript"]["rounds"]) == 1
    assert r.choices[0].message.content.strip()


@pytest.mark.slow
def test_text_completions_endpoint(server):
    r = client(server).completions.create(model="preflexor", prompt="Why is bone tough?", max_tokens=6)
    assert r.choices[0].text.strip() and r.usage.completion_tokens > 0


@pytest.mark.slow
def test_llm_cli_through_extra_openai_models_yaml(server, tmp_path, serve_env):
    (tmp_path / "extra-openai-models.yaml").write_text(f'- model_id: preflexor\n  model_name: preflexor\n  api_base: "{server.url}"\n')
    e = {**serve_env, "LLM_USER_PATH": str(tmp_path)}
    llm_bin = BIN.with_name("llm")
    before = server.health()["served"]
    r = subprocess.run([str(llm_bin), "-m", "preflexor", "What makes nacre tough?"], env=e, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "[round" not in r.stdout  # the answer only: llm reads delta.content
    assert server.health()["served"] == before + 1


@pytest.mark.slow
def test_raw_sse_keepalives_while_queued_then_ordered_chunks(server):
    first = threading.Thread(target=lambda: client(server).chat.completions.create(model="preflexor", messages=Q, max_tokens=12))
    first.start()
    deadline = time.monotonic() + 30
    while not server.health()["busy"] and time.monotonic() < deadline:  # the second request must wait behind it
        time.sleep(0.02)
    body = {"model": "preflexor", "messages": [{"role": "user", "content": "Why is bone tough?"}], "stream": True}
    with httpx.stream("POST", server.url + "/chat/completions", json=body, timeout=120) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = sse_events(resp.iter_lines())
    first.join()
    assert ("comment", "keep-alive") in events  # it waited behind the first request, and said so
    data = [p for kind, p in events if kind == "data"]
    assert data[-1] == "[DONE]"
    chunks = [json.loads(p) for p in data[:-1]]
    assert {c["id"] for c in chunks} == {chunks[0]["id"]} and {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"] for c in chunks[1:-1]]
    order = ["c" if "content" in d else "r" for d in deltas]
    assert order == sorted(order, key=lambda k: k == "c") and "r" in order  # all reasoning, then all content
    assert deltas[0]["reasoning_content"] == "[round 1 · thinking]\n"
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.slow
def test_eight_concurrent_clients_are_all_answered(server):
    before = server.health()["served"]

    def ask(i):
        r = client(server).chat.completions.create(model="preflexor", max_tokens=4, messages=[{"role": "user", "content": f"Name tough material number {i}."}])
        return r.choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(8)))
    assert all(isinstance(a, str) for a in answers)
    assert server.health()["served"] == before + 8


@pytest.mark.slow
def test_disconnect_mid_stream_stops_generation_and_the_next_request_is_served(server):
    before = server.health()["cancelled"]
    body = {"model": "preflexor", "messages": Q, "stream": True, **LONG}
    seen = 0
    with httpx.stream("POST", server.url + "/chat/completions", json=body, timeout=120) as resp:
        for line in resp.iter_lines():
            if '"reasoning_content"' in line:
                seen += 1
                if seen == 5:
                    break  # hang up in the middle of the first round's thinking
    assert seen == 5
    assert server.wait_idle(timeout=5) < 5  # the 3-round, 400-token answer would take far longer
    assert server.health()["cancelled"] == before + 1
    stopped = [int(x) for x in re.findall(r"request stopped (\d+) ms after it was cancelled", server.log())]
    assert stopped and stopped[-1] < 2000, server.log()[-1500:]
    r = client(server).chat.completions.create(model="preflexor", messages=Q, max_tokens=4)
    assert r.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_a_client_that_hangs_up_on_a_whole_answer_stops_it_too(server):
    before = server.health()["cancelled"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/chat/completions", json={"messages": Q, **LONG}, timeout=httpx.Timeout(30, read=1.5))
    assert server.wait_idle(timeout=5) < 5
    assert server.health()["cancelled"] == before + 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "body, param, code",
    [
        ("{not json", None, "invalid_json"),
        ({"model": "gpt-4o", "messages": Q}, "model", "model_not_found"),
        ({"messages": Q, "temperature": 11}, "temperature", "invalid_value"),
        # JSON encoders of Python and JavaScript can send these tokens; NaN passed every range check (a 200 on GGUF)
        ({"messages": Q, "temperature": float("nan")}, "temperature", "invalid_value"),
        ({"messages": Q, "top_p": float("inf")}, "top_p", "invalid_value"),
        ({"messages": Q, "min_p": float("-inf")}, "min_p", "invalid_value"),
        ({"messages": Q, "repetition_penalty": float("nan")}, "repetition_penalty", "invalid_value"),
        ({"messages": Q, "top_p": "high"}, "top_p", "invalid_value"),
        ({"messages": Q, "max_tokens": 10**6}, "max_tokens", "invalid_value"),
        ({"messages": Q, "preflexor": {"rounds": 0}}, "preflexor.rounds", "invalid_value"),
        ({"messages": Q, "preflexor": {"rounds": 99}}, "preflexor.rounds", "invalid_value"),
        ({"messages": Q, "preflexor": {"mode": "debate"}}, "preflexor.mode", "invalid_value"),
        ({"messages": Q, "preflexor": {"budget": 3}}, "preflexor.budget", "invalid_value"),
        ({"messages": Q, "reasoning_effort": "max"}, "reasoning_effort", "invalid_value"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages", "invalid_value"),
        ({"messages": [{"role": "user", "content": "silk " * 3000}]}, "messages", "context_length_exceeded"),
    ],
)
def test_bad_requests_get_400_error_objects_and_the_server_survives(server, body, param, code):
    for stream in (False, True):
        data = body if isinstance(body, str) else json.dumps({**body, "stream": stream})
        r = httpx.post(server.url + "/chat/completions", content=data, headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["type"] == "invalid_request_error" and err["param"] == param and err["code"] == code
        assert err["message"] and "Traceback" not in r.text
    assert server.health()["status"] == "ok"


@pytest.mark.slow
def test_sdk_raises_bad_request_with_the_message(server):
    with pytest.raises(openai.BadRequestError, match="temperature must be at least 0 and at most 10, got 12"):
        client(server).chat.completions.create(model="preflexor", messages=Q, temperature=12)


@pytest.mark.slow
def test_body_cap_and_unknown_routes(server):
    r = httpx.post(server.url + "/chat/completions", content=b"{" + b" " * (2 << 20) + b"}", timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.get(server.url + "/nowhere")
    assert r.status_code == 404 and "error" in r.json()


@pytest.mark.slow
def test_key_required_queue_full_503_and_clean_sigterm(keyed):
    assert httpx.get(keyed.base + "/health").status_code == 200  # no key needed to see that it is up
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.get(keyed.url + "/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client(keyed, api_key="wrong").chat.completions.create(model="preflexor", messages=Q)
    auth = {"Authorization": "Bearer s3cret"}
    assert [m.id for m in client(keyed, api_key="s3cret").models.list().data] == ["preflexor"]

    body = {"model": "preflexor", "messages": Q, "stream": True, **LONG}
    with httpx.stream("POST", keyed.url + "/chat/completions", json=body, headers=auth, timeout=120) as resp:
        lines = resp.iter_lines()
        for line in lines:
            if '"reasoning_content"' in line:
                break  # it runs: the only place is taken
        r = httpx.post(keyed.url + "/chat/completions", json={"messages": Q}, headers=auth, timeout=30)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["error"]["code"] == "queue_full"
        keyed.proc.send_signal(signal.SIGTERM)  # mid-stream: the stream ends with an error event, then [DONE]
        rest = list(lines)
    assert rest[-2:] == ["data: [DONE]", ""] or rest[-1] == "data: [DONE]"
    assert any('"shutting_down"' in line for line in rest)
    assert keyed.proc.wait(timeout=30) == 0
    assert keyed.log().rstrip().endswith("stopped") and "Traceback" not in keyed.log()


def test_public_bind_without_a_key_is_refused_before_loading(serve_env, tmp_path):
    t0 = time.monotonic()
    r = subprocess.run(
        [str(BIN), "serve", "--host", "0.0.0.0", "--model", str(tmp_path / "none.gguf")], env=serve_env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert r.stderr.splitlines()[0] == "error: refusing to listen on 0.0.0.0 without --api-key: anyone who can reach it could use the model"
    assert "Traceback" not in r.stderr and time.monotonic() - t0 < 20
