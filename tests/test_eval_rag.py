"""``eval --rag STORE``: retrieval done once per item and the same for every condition, on a real store.

The reasoner and critic are scripted (``test_eval_runs.Scripted``: the real engine, the real eval code, only the
text generation replaced); the store is a real one built from three small documents.
"""

from __future__ import annotations

import re

import pytest
from rag_fixtures import LoggingStore, make_nacre_store
from test_eval_runs import GREEDY, SCRIPT, Scripted, last_user, q

from preflexor_local.config import Recursion, Retrieval
from preflexor_local.errors import UsageError
from preflexor_local.eval import EvalSettings, evaluate
from preflexor_local.eval.conditions import ItemRunner, Models
from preflexor_local.eval.grounding import Grounding
from preflexor_local.eval.questions import QuestionSet

pytestmark = pytest.mark.slow  # the store is built and searched with the real embedder

THINKING = "nacre tablets slide under load"  # one claim: the critic's evidence is retrieved for it


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return make_nacre_store(tmp_path_factory.mktemp("rag") / "docs")


@pytest.fixture(scope="module")
def store(store_path):
    from preflexor_local.rag import open_store

    s = open_store(store_path, readonly=True)
    yield s
    s.close()


def grounded_reply(request) -> str:
    """Thinking, a grounded critique (always "fix"), a rewrite, and the scripted answers of ``SCRIPT``."""
    user = last_user(request)
    if "Check each claim" in user:
        return "The first step is unsupported, see [1].\nVerdict: fix."
    if "Rewrite the reasoning" in user:
        v = re.findall(r"improved reasoning v(\d)", user)
        return f"improved reasoning v{int(v[-1]) + 1 if v else 1}"
    if request.prefill.endswith("<|thinking|>\n"):
        return THINKING + " <|/thinking|>"
    qid = re.search(r"\[(\w+)\] Why", user).group(1)  # the item's tag, not a passage number
    if request.sampling.temperature > 0:
        return f"The answer is {SCRIPT[qid][request.sampling.seed % 2]}."
    v = re.findall(r"improved reasoning v(\d)", request.prefill)
    return f"The answer is {SCRIPT[qid][int(v[-1]) if v else 0]}."


def test_every_condition_gets_the_same_passages(store):
    SCRIPT["nacre"] = ["A", "B", "A"]  # no two answers in a row agree: the adaptive run goes all 3 rounds
    question = q("nacre", question="[nacre] Why is nacre tough?")
    backend, logged = Scripted(grounded_reply), LoggingStore(store)
    settings = EvalSettings(rounds="1,2,3", baselines="self-consistency", adaptive=True, max_samples=3)
    r = ItemRunner(Models(backend, backend, backend), settings, GREEDY, Recursion(), None, Grounding(logged, rag_k=3, evidence_k=2))
    line = r.run(question)
    recs = {rec["condition"]: rec for rec in line["records"]}
    assert list(recs) == ["rounds-1", "rounds-2", "rounds-3", "adaptive", "self-consistency"]

    # the reasoner's context: retrieved once, for the question (not the options or the answer instruction)
    context = line["context"]
    assert len(context) == 3 and any("thin protein layers" in c["text"] for c in context)
    assert [x for x in logged.queries if x[1] == 3] == [("[nacre] Why is nacre tough?", 3)]
    transcripts = [recs[n]["transcript"] for n in ("rounds-2", "rounds-3", "adaptive")]
    transcripts += [s["transcript"] for s in recs["self-consistency"]["sample_records"]]
    assert len(transcripts) == 2 + 1 + recs["self-consistency"]["samples"] >= 5
    assert all(t["context"] == context for t in transcripts)  # every condition, every sample
    reasoner_prompts = {req.messages[-1]["content"] for req in backend.requests if "<|thinking|>" in req.prefill}
    assert len(reasoner_prompts) == 1 and all(c["text"].strip() in next(iter(reasoner_prompts)) for c in context)

    # the critic's evidence: the same thinking gets the same passages in every condition, retrieved once
    round_passages = {n: [rd["passages"] for rd in recs[n]["transcript"]["rounds"]] for n in ("rounds-2", "rounds-3", "adaptive")}
    assert round_passages["rounds-3"][0] and round_passages["rounds-3"][1]  # rounds 1 and 2 were critiqued against evidence
    assert round_passages["rounds-2"][0] == round_passages["rounds-3"][0] == round_passages["adaptive"][0]
    assert round_passages["rounds-3"][1] == round_passages["adaptive"][1]
    assert recs["adaptive"]["rounds_run"] == 3 and recs["rounds-3"]["rounds"][0]["cited"] == [1]
    # two thinkings checked (round 1's and round 2's rewrite), rounds-2's check served from the item's cache; the
    # adaptive run is rounds-3 cut where it stops (a keyed item): it checks nothing again
    assert line["evidence"] == {"thinkings_checked": 2, "reused": 1}
    evidence_queries = [x[0] for x in logged.queries if x[1] == 2]
    assert evidence_queries.count("[nacre] Why is nacre tough?") == 2 and THINKING in evidence_queries  # the item's question, and the claims
    assert not any("End your reply" in x for x in evidence_queries)
    critiques = [last_user(req) for req in backend.requests if "Check each claim" in last_user(req)]
    assert len(critiques) == 2 + 1 and all("[1] (" in c for c in critiques)  # rounds-3's and rounds-2's


def test_evaluate_with_a_store(store_path, tmp_path):
    SCRIPT["nacre"] = ["A", "B", "A"]
    backend = Scripted(grounded_reply)
    qset = QuestionSet(source="scripted", path="scripted", sha256="0", questions=(q("nacre", question="[nacre] Why is nacre tough?"),))
    settings = EvalSettings(rounds="1,2", baselines="none")
    run = dict(settings=settings, sampling=GREEDY, progress=False, loaded=Models(backend, backend, backend))
    report = evaluate(qset, tmp_path / "out", "scripted", retrieval=Retrieval(rag=str(store_path), rag_k=2, evidence_k=2), **run)
    assert report["settings"]["retrieval"] == {"rag": str(store_path.resolve()), "rag_k": 2, "evidence_k": 2}
    line = (tmp_path / "out" / "items.jsonl").read_text()
    assert '"context": [' in line and "thin protein layers" in line
    plain = evaluate(qset, tmp_path / "plain", "scripted", **run)
    assert plain["settings"]["retrieval"] is None
    with pytest.raises(UsageError, match="holds a run with other settings: retrieval"):  # a folder keeps its store
        evaluate(qset, tmp_path / "out", "scripted", **run)
    with pytest.raises(UsageError, match="RAG store not found"):
        evaluate(qset, tmp_path / "other", "scripted", retrieval=Retrieval(rag=str(tmp_path / "none.db")), **run)
