"""``POST /v1/responses``: request parsing and event building without a model, then the openai SDK against the real
server on loopback (Gemma 3 270M GGUF): ``client.responses.create`` and ``client.responses.stream``."""

from __future__ import annotations

import itertools
import json
import re
import signal

import httpx
import pytest
from serve_fixtures import server_env, start_server

from preflexor_local.config import Recursion, Sampling
from preflexor_local.reasoning.transcript import Call, Round, Transcript
from preflexor_local.serve.errors import APIError
from preflexor_local.serve.responses import ResponseBuilder, parse_responses
from preflexor_local.serve.settings import ServeSettings

openai = pytest.importorskip("openai")
from openai.types.responses import Response, ResponseStreamEvent  # noqa: E402
from pydantic import TypeAdapter  # noqa: E402

S = ServeSettings(max_tokens_limit=1024)
EVENT = TypeAdapter(ResponseStreamEvent)


def parse(body):
    return parse_responses(body, S, Sampling(), Recursion())


def sse(raw: bytes) -> list[dict]:
    """SSE bytes -> event dicts, checking that each ``event:`` line names its data's type."""
    out = []
    for block in raw.decode().split("\n\n"):
        lines = block.splitlines()
        if not lines or lines[0].startswith(":"):
            continue
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        data = json.loads(lines[1][6:])
        assert data["type"] == lines[0][7:]
        out.append(data)
    return out


# -- without a model ---------------------------------------------------------------------------------------------------
def test_input_forms_instructions_and_settings():
    job = parse({"input": "Why is bone tough?"})
    assert job.question == "Why is bone tough?" and not job.stream
    job = parse(
        {
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Use SI units."},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is silk?"}]},
                {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "x"},  # a client replaying our reasoning
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A protein.", "annotations": []}]},
                {"role": "user", "content": "Why is it tough?"},
            ],
            "max_output_tokens": 77,
            "reasoning": {"effort": "high"},
            "temperature": 0.2,
            "stream": True,
            "preflexor": {"mode": "reflect"},
        }
    )
    assert job.recursion.system == "Be brief.\n\nUse SI units."
    assert job.question == "Earlier in this conversation:\nUser: What is silk?\nAssistant: A protein.\n\nWhy is it tough?"
    assert (job.sampling.max_tokens, job.sampling.temperature, job.recursion.rounds, job.recursion.mode, job.stream) == (77, 0.2, 3, "reflect", True)


@pytest.mark.parametrize(
    "body, param, code",
    [
        ([], None, "invalid_json"),
        ({"input": ""}, "input", "invalid_value"),
        ({"input": []}, "input", "invalid_value"),
        ({"input": [{"role": "assistant", "content": "hi"}]}, "input", "invalid_value"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": "{}"}, {"role": "user", "content": "q"}]}, "input[0].type", "invalid_value"),
        ({"input": [{"role": "tool", "content": "q"}]}, "input[0].role", "invalid_value"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0]", "invalid_value"),
        ({"input": "q", "instructions": 3}, "instructions", "invalid_value"),
        ({"input": "q", "previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
        ({"input": "q", "max_output_tokens": 5000}, "max_output_tokens", "invalid_value"),
        ({"input": "q", "reasoning": {"effort": "extreme"}}, "reasoning.effort", "invalid_value"),
        ({"input": "q", "model": "gpt-5"}, "model", "model_not_found"),
    ],
)
def test_bad_requests_name_the_field(body, param, code):
    with pytest.raises(APIError) as e:
        parse(body)
    assert e.value.status == 400 and e.value.param == param and e.value.code == code


def test_an_answer_cut_to_nothing_is_incomplete_with_the_note_and_every_event_fits_the_sdk():
    b = ResponseBuilder("preflexor", {"max_output_tokens": 8})
    raw = b"".join(b.start())
    raw += b"".join(b.piece("reasoning", "[round 1 · thinking]\n", section=True) + b.piece("reasoning", "bone is"))
    calls = [Call("reasoner", "thinking", "m", 10, 4, finish_reason="length"), Call("reasoner", "final", "m", 14, 8, finish_reason="length")]
    t = Transcript(question="q", mode="thinking", rounds=[Round(1, thinking="bone is", calls=calls)], settings={"sampling": {"max_tokens": 8}})
    raw += b"".join(b.piece("reasoning", "[round 1 · no answer]\nThe answer call used all 8 tokens", section=True))
    raw += b"".join(b.finish(t, "length"))
    events = sse(raw)
    for e in events:
        EVENT.validate_python(e)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.incomplete"
    body = Response.model_validate(events[-1]["response"])
    assert body.status == "incomplete" and body.incomplete_details.reason == "max_output_tokens" and body.max_output_tokens == 8
    assert [o.type for o in body.output] == ["reasoning"] and body.output_text == ""
    assert [p.text.split("\n")[0] for p in body.output[0].content] == ["[round 1 · thinking]", "[round 1 · no answer]"]
    assert body.usage.output_tokens == 12 and body.usage.output_tokens_details.reasoning_tokens == 4


def test_a_failure_after_the_headers_is_an_error_event_then_response_failed():
    b = ResponseBuilder("preflexor")
    raw = b"".join(b.start() + b.piece("content", "Bone") + b.failed(APIError(400, "too long", param="messages", code="context_length_exceeded")))
    events = sse(raw)
    for e in events:
        EVENT.validate_python(e)
    assert [e["type"] for e in events[-4:]] == ["response.content_part.done", "response.output_item.done", "error", "response.failed"]
    assert events[-2]["message"] == "too long" and events[-1]["response"]["error"] == {"code": "invalid_prompt", "message": "too long", "param": "messages"}
    assert events[-2]["code"] == "context_length_exceeded"
    assert events[-1]["response"]["output"][0]["status"] == "incomplete"


# -- the real server ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(gemma_gguf, tmp_path_factory):
    args = ["--model", str(gemma_gguf), "--ctx", "2048", "--temperature", "0", "--max-tokens", "8", "--keepalive", "0.2"]
    s = start_server(args, tmp_path_factory.mktemp("serve"), server_env(tmp_path_factory.mktemp("home")))
    yield s
    assert s.stop(signal.SIGINT) == 0, s.log()[-2000:]


def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


@pytest.mark.slow
def test_create_holds_a_reasoning_item_with_labelled_sections_and_a_message_item(server):
    r = client(server).responses.create(
        model="preflexor",
        input="Why is spider silk so tough?",
        instructions="Answer in one sentence.",
        extra_body={"preflexor": {"rounds": 2, "transcript": True}},
    )
    t = r.model_extra["preflexor"]["transcript"]
    assert r.object == "response" and r.id.startswith("resp_") and r.instructions == "Answer in one sentence."
    assert [o.type for o in r.output] == ["reasoning", "message"]
    labels = [p.text.split("\n", 1)[0] for p in r.output[0].content]
    assert labels == [
        "[round 1 · thinking]",
        "[round 1 · answer]",
        "[round 1 · critic · critique]",
        "[round 1 · critic · improved thinking]",
        "[round 2 · answer]",
    ]
    assert r.output[0].content[0].text == "[round 1 · thinking]\n" + t["rounds"][0]["thinking"]
    assert r.output_text == t["final_answer"] and r.output_text.strip()
    final = t["integration"] if t["integrated"] else t["rounds"][-1]["calls"][-1]
    cut = final["finish_reason"] == "length"  # --max-tokens 8: OpenAI's word for it is incomplete
    assert r.status == ("incomplete" if cut else "completed") and r.output[1].status == r.status
    assert (r.incomplete_details.reason if cut else r.incomplete_details) == ("max_output_tokens" if cut else None)
    assert r.usage.input_tokens == t["totals"]["prompt_tokens"] > 0
    assert r.usage.output_tokens == t["totals"]["completion_tokens"] and r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == r.usage.output_tokens - final["completion_tokens"] > 0


@pytest.mark.slow
def test_stream_helper_gets_the_events_in_order_and_the_final_response(server):
    c = client(server)
    body = {"thinking_budget_tokens": 12, "preflexor": {"rounds": 1, "transcript": True}}
    with c.responses.stream(model="preflexor", input="What is bone?", max_output_tokens=120, extra_body=body) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    shape = " ".join(t for t, _ in itertools.groupby(types))  # runs of deltas count once
    assert re.fullmatch(
        r"response\.created response\.in_progress "
        r"response\.output_item\.added (response\.content_part\.added response\.reasoning_text\.delta response\.reasoning_text\.done response\.content_part\.done )+"
        r"response\.output_item\.done "
        r"response\.output_item\.added response\.content_part\.added response\.output_text\.delta response\.output_text\.done response\.content_part\.done "
        r"response\.output_item\.done response\.completed",
        shape,
    ), shape
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    done = [e.text for e in events if e.type == "response.reasoning_text.done"]
    assert reasoning == "".join(done) and done[0].startswith("[round 1 · thinking]\n")
    answer = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    t = final.model_extra["preflexor"]["transcript"]
    assert answer == final.output_text and answer.strip()
    if t["rounds"][0]["thinking_closed"]:  # else the engine streams the model's own end of its thinking as answer text
        assert answer == t["final_answer"]
    assert t["settings"]["recursion"]["thinking_budget"] == 12 and t["rounds"][0]["calls"][0]["completion_tokens"] <= 12
    assert final.status == "completed" and final.usage.output_tokens == t["totals"]["completion_tokens"]
    assert final.usage.output_tokens_details.reasoning_tokens == t["rounds"][0]["calls"][0]["completion_tokens"]


@pytest.mark.slow
def test_raw_stream_events_fit_the_sdk_models(server):
    body = {"input": "What is nacre?", "stream": True}
    with httpx.stream("POST", server.url + "/responses", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse(r.read())
    for e in events:
        EVENT.validate_python(e)
    assert events[0]["type"] == "response.created" and events[-1]["type"] in ("response.completed", "response.incomplete")


@pytest.mark.slow
def test_errors_are_openai_error_objects(server):
    with pytest.raises(openai.BadRequestError, match="temperature must be at least 0 and at most 10, got 12"):
        client(server).responses.create(model="preflexor", input="q", temperature=12)
    for stream in (False, True):
        r = httpx.post(server.url + "/responses", json={"input": [{"role": "assistant", "content": "hi"}], "stream": stream}, timeout=30)
        assert r.status_code == 400 and r.json()["error"] == {
            "message": "input must end with a non-empty user message (or be a non-empty string)",
            "type": "invalid_request_error",
            "param": "input",
            "code": "invalid_value",
        }
    assert server.health()["status"] == "ok"
