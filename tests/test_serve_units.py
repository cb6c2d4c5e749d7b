"""The server's pure parts without a model: request mapping, event translation, bind policy."""

from __future__ import annotations

import pytest

from preflexor_local.config import Recursion, Sampling
from preflexor_local.errors import UsageError
from preflexor_local.reasoning.engine import Event
from preflexor_local.reasoning.transcript import Call, Round, Transcript
from preflexor_local.serve.auth import check_bearer, check_bind, is_loopback
from preflexor_local.serve.errors import APIError
from preflexor_local.serve.request import parse_chat
from preflexor_local.serve.settings import ServeSettings
from preflexor_local.serve.stream import Translator, usage

S = ServeSettings()


def parse(body, sampling=Sampling(), recursion=Recursion()):
    return parse_chat(body, S, sampling, recursion)


def test_defaults_come_from_the_server_and_requests_override_them():
    job = parse({"messages": [{"role": "user", "content": "q"}]}, Sampling(temperature=0.3), Recursion(rounds=2))
    assert job.sampling.temperature == 0.3 and job.recursion.rounds == 2 and job.show_reasoning
    job = parse(
        {
            "messages": [{"role": "user", "content": "q"}],
            "temperature": 0,
            "max_completion_tokens": 7,
            "seed": 3,
            "preflexor": {"rounds": 3, "mode": "reflect", "integrate": False, "thinking_budget": 5},
        }
    )
    assert (job.sampling.temperature, job.sampling.max_tokens, job.sampling.seed) == (0.0, 7, 3)
    assert (job.recursion.rounds, job.recursion.mode, job.recursion.integrate, job.recursion.thinking_budget) == (3, "reflect", False, 5)
    job = parse({"messages": [{"role": "user", "content": "q"}], "dry_multiplier": 0, "dry_base": 2, "dry_allowed_length": 3})
    assert (job.sampling.dry_multiplier, job.sampling.dry_base, job.sampling.dry_allowed_length) == (0.0, 2.0, 3)


@pytest.mark.parametrize("effort, rounds, shown", [("none", 1, False), ("minimal", 1, True), ("low", 1, True), ("medium", 2, True), ("high", 3, True)])
def test_reasoning_effort_maps_to_rounds(effort, rounds, shown):
    job = parse({"messages": [{"role": "user", "content": "q"}], "reasoning_effort": effort})
    assert job.recursion.rounds == rounds and job.show_reasoning is shown
    job = parse({"messages": [{"role": "user", "content": "q"}], "reasoning": {"effort": effort}, "preflexor": {"rounds": 4}})
    assert job.recursion.rounds == 4  # the explicit setting wins


def test_system_and_earlier_turns_become_the_engine_question():
    job = parse(
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is silk?"},
                {"role": "assistant", "content": "A protein fibre."},
                {"role": "user", "content": [{"type": "text", "text": "Why is it tough?"}]},
            ]
        }
    )
    assert job.recursion.system == "Be brief."
    assert job.question == "Earlier in this conversation:\nUser: What is silk?\nAssistant: A protein fibre.\n\nWhy is it tough?"


def test_out_of_range_values_name_the_request_field():
    with pytest.raises(APIError) as e:
        parse({"messages": [{"role": "user", "content": "q"}], "repetition_penalty": 0})
    assert e.value.status == 400 and e.value.param == "repetition_penalty" and e.value.message.startswith("repetition_penalty must be")
    with pytest.raises(APIError) as e:
        parse({"messages": [{"role": "user", "content": "q"}], "dry_base": 0.5})
    assert e.value.param == "dry_base" and e.value.message == "dry_base must be at least 1 and at most 10, got 0.5"
    with pytest.raises(APIError) as e:
        parse({"messages": [{"role": "user", "content": "q"}], "preflexor": {"thinking_budget": 0}})
    assert e.value.param == "preflexor.thinking_budget" and "preflexor.thinking_budget must be at least 1" in e.value.message
    with pytest.raises(APIError) as e:
        parse({"messages": [{"role": "user", "content": "q"}], "preflexor": {"integrate": "yes"}})
    assert e.value.body["error"] == {
        "message": "preflexor.integrate must be true or false, got 'yes'",
        "type": "invalid_request_error",
        "param": "preflexor.integrate",
        "code": "invalid_value",
    }


def test_translator_labels_reasoning_and_trims_the_answer():
    tr = Translator()
    events = [
        Event("call", 1, "reasoner", "thinking"),
        Event("text", 1, "reasoner", "thinking", "think"),
        Event("call", 1, "critic", "critique"),
        Event("text", 1, "critic", "critique", "ok"),
        Event("call", 2, "reasoner", "final"),
        Event("text", 2, "reasoner", "final", "\n  The "),
        Event("text", 2, "reasoner", "final", "answer. \n"),
        Event("text", 2, "reasoner", "final", " "),
    ]
    out = [p for e in events for p in tr.feed(e)]
    assert tr.reasoning_text == "[round 1 · thinking]\nthink\n\n[round 1 · critic · critique]\nok"
    assert [p for p in out if p[0] == "content"] == [("content", "The"), ("content", " answer.")]
    assert tr.finish(Transcript(question="q", mode="thinking", final_answer="The answer.")) == []


def test_translator_stop_strings_cut_the_answer_across_chunks():
    tr = Translator(stop=("END",))
    out = [p for t in ("one tw", "o E", "ND three") for p in tr.feed(Event("text", 1, "reasoner", "final", t))]
    assert "".join(t for _, t in out) == "one two" and tr.stopped


def test_an_empty_final_stream_falls_back_to_the_transcript_answer():
    tr = Translator(show_reasoning=False)
    assert tr.feed(Event("text", 1, "reasoner", "thinking", "x")) == []
    assert tr.finish(Transcript(question="q", mode="thinking", final_answer="fallback")) == [("content", "fallback")]


def test_usage_counts_every_call():
    t = Transcript(
        question="q",
        mode="thinking",
        rounds=[Round(1, calls=[Call("reasoner", "thinking", "m", 10, 5), Call("critic", "critique", "m", 20, 7)])],
        integration=Call("integrator", "final", "m", 30, 3),
        integrated=True,
    )
    u = usage(t)
    assert (u["prompt_tokens"], u["completion_tokens"], u["total_tokens"]) == (60, 15, 75)
    assert u["completion_tokens_details"]["reasoning_tokens"] == 12


def test_bind_policy_and_bearer():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")
    check_bind("127.0.0.1", None)
    check_bind("0.0.0.0", "key")
    with pytest.raises(UsageError, match="refusing to listen on 0.0.0.0 without --api-key"):
        check_bind("0.0.0.0", None)
    check_bearer(None, None)
    check_bearer("Bearer k", "k")
    for header in (None, "Bearer x", "k", "Basic k"):
        with pytest.raises(APIError) as e:
            check_bearer(header, "k")
        assert e.value.status == 401


def test_server_settings_have_ranges():
    with pytest.raises(UsageError, match="--max-queue must be at least 0"):
        ServeSettings(max_queue=-1)
    assert ServeSettings().effort_rounds("high") == 3 and ServeSettings().effort_rounds("max") is None
