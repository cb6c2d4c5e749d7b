"""The recursive engine on a tiny random Llama through the real transformers backend."""

import pytest
from scripted import Scripted as ScriptedModel

from preflexor_local.backends import Backend, load
from preflexor_local.config import Recursion, Sampling
from preflexor_local.errors import UsageError
from preflexor_local.format import ThinkingFormat, parse
from preflexor_local.reasoning.engine import Engine
from preflexor_local.reasoning.transcript import Transcript

FMT = ThinkingFormat()
SAMPLING = Sampling(temperature=0, repeat_penalty=1.0, dry_multiplier=0.0, max_tokens=8)


class Recording(Backend):
    """Delegates to a real backend and keeps every request it was given."""

    kind = "recording"

    def __init__(self, inner):
        super().__init__(inner.name)
        self.inner, self.requests, self.results = inner, [], []
        self.template = inner.template

    def stream(self, request):
        self.requests.append(request)
        for item in self.inner.stream(request):
            if not isinstance(item, str):
                self.results.append(item)
            yield item

    def describe(self):
        return self.inner.describe()


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    b = load(str(tiny_llama))
    yield b
    b.close()


def run(tiny, rounds=3, mode="thinking", **kw):
    rec = Recording(tiny)
    events = []
    kw.setdefault("early_stop", False)  # the tiny model's greedy answers agree at once: these tests count every round
    kw.setdefault("guards", "on")  # the small-model guards these tests check (auto: on for the embedded models only)
    engine = Engine(rec, sampling=SAMPLING, recursion=Recursion(rounds=rounds, mode=mode, **kw), on_event=events.append)
    return engine.run("Why is spider silk tough?"), rec, events


def test_rounds_roles_and_integration(tiny):
    t, rec, events = run(tiny, rounds=3)
    assert len(t.rounds) == 3
    assert [(c.role, c.channel) for c in t.rounds[0].calls] == [("reasoner", "thinking"), ("reasoner", "answer"), ("critic", "critique"), ("critic", "rewrite")]
    assert [(c.role, c.channel) for c in t.rounds[1].calls] == [("reasoner", "answer"), ("critic", "critique"), ("critic", "rewrite")]
    assert [(c.role, c.channel) for c in t.rounds[2].calls] == [("reasoner", "answer")]
    assert t.integration is not None and t.integration.role == "integrator"
    assert len(rec.requests) == 4 + 3 + 1 + 1
    assert t.rounds[0].thinking_source == "model" and t.rounds[1].thinking_source == "improved"
    assert any(e.channel == "final" and e.kind == "call" for e in events)
    # after a thinking section the model closed or that was pre-filled, an answer ends at any tag-shaped text, whole
    # or half-formed; after one the engine closed at its budget, only at an opening tag (the model may close it itself)
    answer_requests = [r for r in rec.requests if r.prefill.rstrip().endswith(FMT.think_end)]
    assert len(answer_requests) == 3
    for rnd, req in zip(t.rounds, answer_requests):
        assert req.stop == (("<|",) if rnd.thinking_closed else (FMT.think_start, FMT.reflect_start))
    assert t.rounds[1].thinking_source == "improved" and answer_requests[1].stop == ("<|",)
    assert rec.requests[-1].stop == ("<|",)  # the integrated answer


def test_critic_sees_the_previous_thinking_and_reasoner_continues_the_improved_one(tiny):
    t, rec, _ = run(tiny, rounds=2, integrate=False)
    r1, r2 = t.rounds
    critique_req, rewrite_req, answer2_req = rec.requests[2], rec.requests[3], rec.requests[4]
    assert r1.thinking and r1.thinking in critique_req.messages[-1]["content"]
    assert r1.critique in rewrite_req.messages[-1]["content"] and r1.thinking in rewrite_req.messages[-1]["content"]
    # round 2 starts from the critic's rewrite, pre-filled as a closed thinking section
    assert answer2_req.prefill == FMT.thinking_block(r1.improved_thinking)
    assert r2.thinking == r1.improved_thinking
    # ... and its answer is exactly the model's continuation of that prefill
    assert r2.answer == parse(answer2_req.prefill + rec.results[4].text, FMT).answer
    assert rec.results[4].text.strip().endswith(r2.answer)
    # the reasoner's own messages are rebuilt, never mutated between calls
    assert rec.requests[0].messages == answer2_req.messages
    assert t.final_answer == r2.answer and not t.integrated


def test_thinking_budget_closes_the_section_for_the_model(tiny):
    t, rec, _ = run(tiny, rounds=1, thinking_budget=2)
    first = t.rounds[0].calls[0]
    assert first.channel == "thinking" and first.completion_tokens <= 2
    assert t.rounds[0].thinking_closed == (first.finish_reason == "stop")
    answer_req = rec.requests[1]
    assert answer_req.prefill.startswith(FMT.think_start) and answer_req.prefill.endswith(FMT.think_end + "\n")
    assert t.integration is None  # a single answer is not integrated
    # the engine closed it (greedy on this model: deterministic); the model may still close it itself, so only
    # opening tags stop the answer
    assert not t.rounds[0].thinking_closed and answer_req.stop == (FMT.think_start, FMT.reflect_start)


def test_reflect_mode_writes_a_reflection_each_round(tiny):
    t, rec, _ = run(tiny, rounds=2, mode="reflect")
    channels = [c.channel for c in t.rounds[0].calls]
    assert channels[:3] == ["thinking", "reflection", "answer"]
    assert t.rounds[0].critique_source in ("reflection", "critic")
    assert [c.channel for c in t.rounds[1].calls][:2] == ["reflection", "answer"]
    assert rec.requests[1].prefill.endswith(FMT.reflect_start + "\n")


def test_transcript_json_round_trip(tiny):
    t, _, _ = run(tiny, rounds=2)
    data = t.to_dict()
    assert data["totals"]["completion_tokens"] == t.completion_tokens > 0
    assert data["rounds"][0]["seconds"] > 0
    again = Transcript.from_json(t.to_json())
    assert again == t
    assert again.settings["recursion"]["rounds"] == 2 and again.models["reasoner"]["backend"] == "transformers"


def test_bad_settings(tiny):
    with pytest.raises(UsageError, match="--recursive"):
        Recursion(rounds=0)
    with pytest.raises(UsageError, match="unknown mode"):
        Engine(tiny, recursion=Recursion(mode="nope"))
    with pytest.raises(UsageError, match="empty"):
        Engine(tiny).run("   ")


def test_retrieved_context_goes_into_the_reasoner_prompt_with_citations(tiny):
    rec = Recording(tiny)
    ctx = [{"id": 7, "text": "Nacre has staggered tablets.", "source": "nacre.md line 3"}]
    t = Engine(rec, sampling=SAMPLING, recursion=Recursion(rounds=1), context=ctx).run("How does nacre stop cracks?")
    user = rec.requests[0].messages[-1]["content"]
    assert "[1] (nacre.md line 3) Nacre has staggered tablets." in user
    assert user.endswith("How does nacre stop cracks?" + FMT.cue.format(think_start=FMT.think_start))
    assert t.context == ctx


def Scripted(reply):
    """The suite's scripted model (``scripted.Scripted``), three characters a token as these tests were recorded with."""
    return ScriptedModel(reply, tokens=lambda text: len(text) // 3)


THINKING = "**Core Concepts**: silk is a protein fibre.\n\n**Reasoning Steps**:\n1. Crystals bear the load.\n\n**Hypothesis**: crystals make it tough."
REWRITE = THINKING.replace("load.", "load; the amorphous matrix stretches.")


def scripted_reply(tail: str):
    def reply(request) -> str:
        user = request.messages[-1]["content"]
        if "Review this reasoning" in user:
            return "1. Step 1 leaves out the amorphous matrix that stretches."
        if "Rewrite the reasoning" in user:  # opened by the engine; goes on after its hypothesis, as the demo model may
            assert REWRITE.startswith(request.prefill)
            return REWRITE[len(request.prefill) :] + tail
        if request.prefill.endswith(FMT.think_start + "\n"):
            return THINKING + "\n" + FMT.think_end
        return "Silk is tough because stiff crystals and a stretchy matrix share the load."

    return reply


HEADS = ("**Core Concepts**:", "**Reasoning Steps**:", "**Hypothesis**:")


def GUARDED(**kw) -> Recursion:
    """The small-model guards on (a scripted model is not an embedded one), every round run."""
    return Recursion(guards="on", early_stop=False, **kw)


@pytest.mark.parametrize("stop_repeats", [True, False])
@pytest.mark.parametrize(
    "tail", ["\n\n**Reasoning Steps**:\n1. Crystals bear the load, crystals bear", "\n\n**Relevance Steps**:\n1. Silk is used in", "\n<p><strong>\n**"]
)
def test_a_rewrite_ends_where_it_starts_its_layout_over_or_goes_past_it(stop_repeats, tail):
    model = Scripted(scripted_reply(tail))
    sampling = Sampling(temperature=0, max_tokens=64, stop_repeats=stop_repeats)
    events = []
    t = Engine(model, sampling=sampling, recursion=GUARDED(rounds=2, integrate=False), on_event=events.append).run("Why is spider silk tough?")
    rewrite_request = next(r for r in model.requests if "Rewrite the reasoning" in r.messages[-1]["content"])
    assert rewrite_request.prefill == HEADS[0]  # opened with the thinking's first heading, and shown as the rewrite's
    assert rewrite_request.stops_after == (("", HEADS[0]), *((h, h) for h in HEADS[1:]), ("**Hypothesis**:", "\n"))
    streamed = "".join(e.text for e in events if e.channel == "rewrite")
    assert streamed.strip() == t.rounds[0].improved_thinking
    # the review may not copy the thinking it reviews; the rewrite is meant to keep what was right
    review_request = next(r for r in model.requests if "Review this reasoning" in r.messages[-1]["content"])
    assert review_request.dry_source == t.rounds[0].thinking != "" and rewrite_request.dry_source == ""
    assert review_request.stop == HEADS  # a review that opens a section of the thinking is rewriting it
    rewrite = next(c for c in t.rounds[0].calls if c.channel == "rewrite")
    if stop_repeats:
        assert t.rounds[0].improved_thinking == t.rounds[1].thinking == REWRITE
        assert rewrite.finish_reason == "restart"
    else:  # --no-stop-repeats lets it run, as it lets loops run
        assert t.rounds[0].improved_thinking == (REWRITE + tail).strip()
        assert rewrite.finish_reason == "eos"


def test_an_answer_or_integration_that_writes_a_heading_of_the_thinking_has_gone_back_to_thinking():
    base = scripted_reply("")
    relapse = "\n\n**Core Concepts**: silk is a protein fibre.\n\n**Reasoning Steps**:\n1. Crystals"

    def reply(request) -> str:
        text = base(request)
        if "Write one final answer" in request.messages[-1]["content"]:
            return "Silk is tough because crystals and matrix share the load." + relapse
        return text + relapse if text.startswith("Silk is tough") else text

    model = Scripted(reply)
    t = Engine(model, sampling=Sampling(temperature=0, max_tokens=64), recursion=GUARDED(rounds=2)).run("Why is spider silk tough?")
    answers = [c for r in t.rounds for c in r.calls if c.channel == "answer"]
    assert [r.answer for r in t.rounds] == ["Silk is tough because stiff crystals and a stretchy matrix share the load."] * 2
    assert [c.finish_reason for c in answers] == ["stop", "stop"]
    assert t.final_answer == "Silk is tough because crystals and matrix share the load." and t.integration.finish_reason == "stop"
    # after a thinking the engine closed (the model did not) the model may still be thinking: only tags end it there
    unclosed = Scripted(lambda request: THINKING if request.prefill.endswith(FMT.think_start + "\n") else reply(request))
    rnd = Engine(unclosed, sampling=Sampling(temperature=0, max_tokens=64), recursion=GUARDED(rounds=1)).run("Why is spider silk tough?").rounds[0]
    assert rnd.thinking_closed is False and unclosed.requests[-1].stop == FMT.opening_tags
