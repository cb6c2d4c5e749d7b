"""Recursion that pays: the critic checks the thinking against passages from a real store, rounds stop when nothing is
wrong or answers agree, keyed answers are selected, and the small-model guards follow the model."""

from __future__ import annotations

import pytest
from rag_fixtures import LoggingStore, make_nacre_store
from scripted import Scripted

from preflexor_local.answers import Key
from preflexor_local.config import Recursion, Sampling
from preflexor_local.format import cited_passages, critic_verdict
from preflexor_local.reasoning.engine import AGREE, Engine, answers_agree, select
from preflexor_local.reasoning.transcript import Round, Transcript

S = Sampling(temperature=0, max_tokens=64)
THINKING = (
    "**Core Concepts**: nacre is a brick-and-mortar composite.\n\n**Reasoning Steps**:\n"
    "1. Aragonite tablets are glued by thick metal layers.\n2. Cracks run straight through the tablets.\n\n"
    "**Hypothesis**: nacre is tough because of its metal glue."
)
REVIEW_FIX = "1. Step 1 is wrong: [1] says the tablets are glued by thin protein layers, not metal.\n2. Step 2: [2] says cracks are deflected.\nVerdict: fix."
REVIEW_OK = "1. Step 1 agrees with [1].\nVerdict: nothing to fix."


def model(review: str = REVIEW_FIX, answers=None):
    answers = iter(answers or [f"Nacre is tough, answer {i}." for i in range(1, 9)])

    def reply(request) -> str:
        user = request.messages[-1]["content"]
        if "Review this reasoning" in user or "Check each claim" in user:
            return review
        if "Rewrite the reasoning" in user:
            return THINKING.replace("thick metal", "thin protein")[len(request.prefill) :]
        if request.prefill.endswith("<|thinking|>\n"):
            return THINKING + "\n<|/thinking|>"
        if "Write one final answer" in user:
            return "Merged."
        return next(answers)

    return Scripted(reply)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from preflexor_local.rag import open_store

    s = open_store(make_nacre_store(tmp_path_factory.mktemp("rag") / "docs"), readonly=True)
    yield s
    s.close()


@pytest.mark.slow
def test_the_critic_checks_the_thinking_against_passages_retrieved_for_its_claims_and_cites_them(store):
    from preflexor_local.rag.evidence import Evidence

    m, logged, events = model(), LoggingStore(store), []
    t = Engine(m, sampling=S, recursion=Recursion(rounds=2, integrate=False, early_stop=False), evidence=Evidence(logged, k=3), on_event=events.append).run(
        "Why is nacre tough?"
    )
    # retrieved for the question and for each claim of the thinking (its steps and hypothesis), not the question alone
    queries = [q for q, _ in logged.queries]
    assert queries[0] == "Why is nacre tough?" and "Aragonite tablets are glued by thick metal layers." in queries
    assert "nacre is tough because of its metal glue." in queries
    r1 = t.rounds[0]
    assert [p["n"] for p in r1.passages] == [1, 2] and any("thin protein layers" in p["text"] for p in r1.passages)
    assert all({"n", "source", "text"} <= set(p) for p in r1.passages)
    assert r1.cited == [1, 2] and r1.verdict == "fix"
    review = next(r for r in m.requests if "Check each claim" in r.messages[-1]["content"]).messages[-1]["content"]
    rewrite = next(r for r in m.requests if "Rewrite the reasoning" in r.messages[-1]["content"]).messages[-1]["content"]
    for prompt in (review, rewrite):
        assert "Passages:\n[1] (" in prompt and r1.passages[0]["text"] in prompt
    assert "thin protein" in t.rounds[1].thinking  # the rewrite fixed the contradicted claim
    shown = [e for e in events if e.channel == "evidence"]
    assert shown[0].kind == "call" and "[1] (" in shown[1].text  # the stream shows what the critique saw
    again = Transcript.from_json(t.to_json())
    assert again.rounds[0].passages == r1.passages and again.rounds[0].cited == [1, 2]


def test_without_a_store_nothing_is_retrieved_and_the_prompts_are_as_before():
    m = model()
    t = Engine(m, sampling=S, recursion=Recursion(rounds=2, integrate=False, early_stop=False)).run("Why is nacre tough?")
    assert t.rounds[0].passages == [] and t.rounds[0].cited == []
    assert not any("Passages:" in r.messages[-1]["content"] for r in m.requests)
    assert any("Review this reasoning" in r.messages[-1]["content"] for r in m.requests)


def test_a_verdict_of_nothing_to_fix_stops_the_rounds_and_skips_the_rewrite():
    m, events = model(REVIEW_OK), []
    t = Engine(m, sampling=S, recursion=Recursion(rounds=3), on_event=events.append).run("Why is nacre tough?")
    assert len(t.rounds) == 1 and t.stop_reason == "nothing_to_fix" and t.rounds[0].verdict == "nothing to fix"
    assert not any("Rewrite the reasoning" in r.messages[-1]["content"] for r in m.requests)
    assert t.final_answer == "Nacre is tough, answer 1." and t.integration is None
    stop = [e.text for e in events if e.channel == "stop" and e.kind == "text"]
    assert stop == ["stopped after round 1 of at most 3: the critic found nothing to fix\n"]
    # every round forced: all three run; nothing to fix still means no rewrite, the thinking carries over
    m = model(REVIEW_OK)
    t = Engine(m, sampling=S, recursion=Recursion(rounds=3, early_stop=False)).run("Why is nacre tough?")
    assert len(t.rounds) == 3 and t.stop_reason == "rounds" and t.rounds[1].thinking == t.rounds[0].thinking
    assert not any("Rewrite the reasoning" in r.messages[-1]["content"] for r in m.requests) and t.integrated


def test_two_agreeing_answers_stop_the_rounds():
    same = ["Nacre is tough because protein layers deflect cracks between its tablets."] * 2 + ["Something else entirely."]
    t = Engine(model(answers=same), sampling=S, recursion=Recursion(rounds=3)).run("Why is nacre tough?")
    assert len(t.rounds) == 2 and t.stop_reason == "answers_agree" and not t.integrated  # agreeing answers need no merge
    assert t.final_answer == same[0]
    t = Engine(model(answers=same), sampling=S, recursion=Recursion(rounds=3, early_stop=False)).run("Why is nacre tough?")
    assert len(t.rounds) == 3 and t.stop_reason == "rounds" and t.integrated


def test_near_identical_means_at_least_the_stated_word_similarity():
    base = "the tablets of nacre slide over each other and protein layers deflect the crack so energy is absorbed slowly"
    words = base.split()  # 20 words
    one = " ".join(words[:-1] + ["gradually"])  # 1 of 20 changed: ratio 0.95
    three = " ".join(["some", "other", "words"] + words[3:])  # 3 of 20 changed: ratio 0.85
    assert AGREE == 0.9 and answers_agree(base, one) and not answers_agree(base, three)
    assert not answers_agree("", "") and answers_agree("The answer is B.", "So the answer is B.", Key("choice"))
    assert not answers_agree("The answer is B.", "The answer is C.", Key("choice"))
    assert answers_agree("The answer is 200 MPa.", "It comes to 200.5 MPa, so the answer is 200.5.", Key("numeric", tolerance=0.01))


def _rounds(*answers_and_verdicts) -> list[Round]:
    return [Round(index=i, answer=a, verdict=v) for i, (a, v) in enumerate(answers_and_verdicts, 1)]


def test_keyed_selection_majority_then_critic_support_then_latest():
    key = Key("choice", ("Aragonite", "Calcite", "Silica", "Iron"))
    s = select(_rounds(("The answer is B.", None), ("The answer is C.", None), ("The answer is B, calcite.", None)), key)
    assert (s["chosen"], s["rule"], s["answer"]) == ("B", "majority", "The answer is B, calcite.") and s["votes"] == {"B": 2, "C": 1}
    s = select(_rounds(("The answer is B.", "nothing to fix"), ("The answer is C.", "fix")), key)
    assert (s["chosen"], s["rule"]) == ("B", "tie: critic found nothing to fix")
    s = select(_rounds(("The answer is B.", None), ("The answer is C.", None)), key)
    assert (s["chosen"], s["rule"], s["answer"]) == ("C", "tie: the latest", "The answer is C.")
    s = select(_rounds(("no idea", None), ("none", None)), key)
    assert s["chosen"] is None and s["answer"] == "none"
    s = select(_rounds(("The answer is 200.", None), ("The answer is 201.", None), ("The answer is 150.", None)), Key("numeric", tolerance=0.01))
    assert s["chosen"] == 200.0 and s["votes"] == {"200.0": 2, "150.0": 1}


def test_a_keyed_run_selects_the_final_answer_and_never_merges_it():
    answers = ["I think the answer is C.", "The answer is B.", "Then the answer is B."]
    m = model(answers=answers)
    t = Engine(m, sampling=S, recursion=Recursion(rounds=3, early_stop=False, keyed="choice")).run("Which mineral? A) x B) y C) z D) w")
    assert t.final_answer == "Then the answer is B." and t.selection["chosen"] == "B" and t.selection["stated"] == ["C", "B", "B"]
    assert t.integration is None and not any("Write one final answer" in r.messages[-1]["content"] for r in m.requests)
    t = Engine(model(answers=answers), sampling=S, recursion=Recursion(rounds=3, keyed="choice")).run("Which? A) x B) y C) z D) w")
    assert len(t.rounds) == 3 and t.stop_reason == "rounds"  # C then B: no agreement until round 3 agrees with round 2
    t = Engine(model(answers=["The answer is A.", "So, the answer is A."]), sampling=S, recursion=Recursion(rounds=3)).run("Q?", key=Key("choice"))
    assert len(t.rounds) == 2 and t.stop_reason == "answers_agree" and t.selection["chosen"] == "A"


class Embedded(Scripted):
    embedded = True


@pytest.mark.parametrize("cls,setting,on", [(Scripted, "auto", False), (Embedded, "auto", True), (Embedded, "off", False), (Scripted, "on", True)])
def test_the_small_model_guards_are_one_switch_on_for_the_embedded_models(cls, setting, on):
    m = cls(model().reply)
    Engine(m, sampling=S, recursion=Recursion(rounds=2, guards=setting, early_stop=False)).run("Why is nacre tough?")
    review = next(r for r in m.requests if "Review this reasoning" in r.messages[-1]["content"])
    rewrite = next(r for r in m.requests if "Rewrite the reasoning" in r.messages[-1]["content"])
    answer = next(r for r in m.requests if r.prefill.rstrip().endswith("<|/thinking|>"))
    assert bool(review.dry_source) is on and bool(review.stop) is on  # DRY source and heading stops
    assert (rewrite.prefill == "**Core Concepts**:") is on and bool(rewrite.stops_after) is on  # the rewrite frame
    assert answer.stop[0] == ("<|" if on else "<|thinking|>")  # the tag-prefix stop


def test_verdict_and_citation_parsing():
    assert critic_verdict("1. ok\nVerdict: nothing to fix.") == "nothing to fix"
    assert critic_verdict("**Verdict**: Fix.") == "fix" and critic_verdict("no verdict here") is None
    assert critic_verdict("Verdict: nothing to fix.\n2. Step 2 is wrong.\nVerdict: fix.") == "fix"  # the last one counts
    assert cited_passages("see [2], [1] and [9], again [2]", 3) == [1, 2]
