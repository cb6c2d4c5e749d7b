"""The budget and effort names clients send, mapped onto rounds and the thinking budget; an empty answer says why."""

from __future__ import annotations

import pytest

from preflexor_local.config import Recursion, Sampling
from preflexor_local.reasoning.engine import Event
from preflexor_local.reasoning.transcript import Call, Round, Transcript
from preflexor_local.serve.errors import APIError
from preflexor_local.serve.request import parse_chat
from preflexor_local.serve.settings import ServeSettings
from preflexor_local.serve.stream import Translator, empty_answer_note, finish_reason

S = ServeSettings(max_tokens_limit=2048, effort_medium=2, effort_high=3)
Q = [{"role": "user", "content": "q"}]


def parse(**body):
    return parse_chat({"messages": Q, **body}, S, Sampling(), Recursion(rounds=1, thinking_budget=None))


@pytest.mark.parametrize(
    "body",
    [
        {"thinking_budget_tokens": 300},
        {"reasoning_budget": 300},
        {"chat_template_kwargs": {"thinking_budget": 300}},
        {"think": 300},
        {"chat_template_kwargs": {"thinking_budget": 300, "enable_thinking": True}},
    ],
)
def test_every_budget_name_sets_the_thinking_budget(body):
    job = parse(**body)
    assert job.recursion.thinking_budget == 300 and job.recursion.rounds == 1 and job.show_reasoning


def test_precedence_is_the_documented_order():
    assert parse(thinking_budget_tokens=100, reasoning_budget=200, think=300).recursion.thinking_budget == 100
    assert parse(reasoning_budget=200, chat_template_kwargs={"thinking_budget": 250}).recursion.thinking_budget == 200
    assert parse(chat_template_kwargs={"thinking_budget": 250}, think=300).recursion.thinking_budget == 250
    assert parse(thinking_budget_tokens=100, preflexor={"thinking_budget": 7}).recursion.thinking_budget == 7  # ours wins


def test_minus_one_is_unrestricted_and_zero_means_no_visible_thinking():
    job = parse_chat({"messages": Q, "reasoning_budget": -1}, S, Sampling(), Recursion(rounds=2, thinking_budget=64))
    assert job.recursion.thinking_budget is None and job.recursion.rounds == 2
    for body in ({"reasoning_budget": 0}, {"thinking_budget_tokens": 0}, {"think": 0}, {"chat_template_kwargs": {"thinking_budget": 0}}):
        job = parse_chat({"messages": Q, **body}, S, Sampling(), Recursion(rounds=3, thinking_budget=64))
        assert job.recursion.rounds == 1 and not job.show_reasoning and job.recursion.thinking_budget == 64, body


@pytest.mark.parametrize("think, rounds, shown", [(False, 1, False), (True, 3, True), ("low", 1, True), ("medium", 2, True), ("high", 3, True)])
def test_ollama_think_true_false_or_a_level(think, rounds, shown):
    job = parse_chat({"messages": Q, "think": think}, S, Sampling(), Recursion(rounds=3))
    assert (job.recursion.rounds, job.show_reasoning) == (rounds, shown)


def test_effort_names_keep_working_and_win_over_think():
    assert not parse(chat_template_kwargs={"enable_thinking": False}).show_reasoning
    assert parse(reasoning_effort="high", think=False).recursion.rounds == 3
    assert parse(reasoning={"effort": "medium"}).recursion.rounds == 2
    assert parse(think="high", preflexor={"rounds": 4}).recursion.rounds == 4


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"thinking_budget_tokens": "lots"}, "thinking_budget_tokens", "must be an integer: -1 (unrestricted), 0 (no thinking)"),
        ({"reasoning_budget": -2}, "reasoning_budget", "must be an integer"),
        ({"reasoning_budget": 1.5}, "reasoning_budget", "must be an integer"),
        ({"chat_template_kwargs": {"thinking_budget": True}}, "chat_template_kwargs.thinking_budget", "must be an integer"),
        ({"thinking_budget_tokens": 5000}, "thinking_budget_tokens", "at most 2048 tokens per model call (--max-tokens-limit)"),
        ({"think": "max"}, "think", "think must be true, false, one of low, medium, high"),
        ({"think": [1]}, "think", "think must be true, false"),
        ({"chat_template_kwargs": "on"}, "chat_template_kwargs", "chat_template_kwargs must be an object"),
        ({"reasoning": "high"}, "reasoning", "reasoning must be an object"),
    ],
)
def test_bad_budgets_are_400s_naming_the_field(body, param, words):
    with pytest.raises(APIError) as e:
        parse(**body)
    assert e.value.status == 400 and e.value.param == param and words in e.value.message


# -- an answer cut before any text ----------------------------------------------------------------------------------
def _cut(final_reason: str, answer: str = "") -> Transcript:
    calls = [Call("reasoner", "thinking", "m", 10, 40, finish_reason="stop"), Call("reasoner", "final", "m", 50, 8, finish_reason=final_reason)]
    return Transcript(
        question="q",
        mode="thinking",
        rounds=[Round(1, thinking="t", answer=answer, calls=calls)],
        final_answer=answer,
        settings={"sampling": {"max_tokens": 8}},
    )


def test_an_answer_cut_before_any_text_is_length_with_a_note_in_the_reasoning():
    t = _cut("length")
    tr = Translator()
    tr.feed(Event("call", 1, "reasoner", "thinking"))
    tr.feed(Event("text", 1, "reasoner", "thinking", "t"))
    tr.feed(Event("call", 1, "reasoner", "final"))
    tr.feed(Event("text", 1, "reasoner", "final", "  \n"))  # whitespace only: no answer text
    out = tr.finish(t)
    assert finish_reason(t, tr.stopped) == "length" and tr.content == ""
    assert len(out) == 1 and out[0][0] == "reasoning"
    assert out[0][1].startswith("\n\n[round 1 · no answer]\nThe answer call used all 8 tokens of its max_tokens before writing any answer text")
    assert "raise max_tokens" in out[0][1] and tr.reasoning_text.endswith(out[0][1])


def test_the_note_shows_even_with_the_reasoning_hidden_and_only_when_the_answer_is_empty():
    out = Translator(show_reasoning=False).finish(_cut("length"))
    assert out == [("reasoning", empty_answer_note(_cut("length")))]
    assert empty_answer_note(_cut("stop")) == "[round 1 · no answer]\nThe model ended its answer without writing any text."
    assert empty_answer_note(_cut("length", answer="Bone.")) is None
    assert Translator().finish(_cut("length", answer="Bone.")) == [("content", "Bone.")]
