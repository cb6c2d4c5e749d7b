"""Eval conditions, budgets, the judge and the report, on scripted models whose every reply is known.

A scripted backend goes through the real engine (``Engine``), the real judge and
the real report code; only the text generation is replaced, so token counts,
verdicts and correctness are exact and the assertions can be exact too.
"""

import json
import math
import re

import pytest
from scripted import Scripted

from preflexor_local.config import Recursion, Sampling
from preflexor_local.eval import EvalSettings, evaluate
from preflexor_local.eval.conditions import ItemRunner, Models, item_seed
from preflexor_local.eval.judge import PairwiseJudge, read_verdict
from preflexor_local.eval.questions import QuestionSet, parse_question
from preflexor_local.eval.report import summarize
from preflexor_local.eval.runner import read_items, run_items
from preflexor_local.eval.stats import Z95

GREEDY = Sampling(temperature=0, max_tokens=64, seed=0)


def last_user(request) -> str:
    return request.messages[-1]["content"]


# Per question: the answer the reasoner gives in rounds 1, 2, 3 (and in baseline samples, by seed parity).
SCRIPT = {
    "up": ["A", "B", "B"],  # key B: wrong → right
    "down": ["A", "B", "B"],  # key A: right → wrong
    "stay": ["B", "B", "B"],  # key B: stays right
    "zig": ["A", "B", "A"],  # key B: wrong → right → wrong
    "num": ["unsure", "42", "42"],  # key 42; round 1 gives no number at all (unreadable)
}


def reasoner_reply(request) -> str:
    """Thinking is 4 tokens, an answer 2, a critique 5, a rewrite 3, an integration 2."""
    user = last_user(request)
    if "Review this reasoning" in user:
        return "one two three four five"
    if "Rewrite the reasoning" in user:
        v = re.findall(r"improved reasoning v(\d)", user)
        return f"improved reasoning v{int(v[-1]) + 1 if v else 1}"
    if "draft answers" in user:
        return re.findall(r"Draft \d+:\n(.*)", user)[-1]  # the integrator keeps the last draft
    if request.prefill.endswith("<|thinking|>\n"):
        return "first reasoning goes here <|/thinking|> ignored"
    qid = re.search(r"\[(\w+)\]", user).group(1)
    v = re.findall(r"improved reasoning v(\d)", request.prefill)
    rnd = int(v[-1]) + 1 if v else 1
    if request.sampling.temperature > 0:  # a baseline sample: alternate by seed
        return f"Answer: {SCRIPT[qid][request.sampling.seed % 2]}"
    return f"Answer: {SCRIPT[qid][rnd - 1]}"


def q(qid, kind="choice", answer="B", **kw):
    row = {"id": qid, "question": f"[{qid}] Which is right?", "kind": kind, **kw}
    if kind == "choice":
        row.update(choices=["first", "second"], answer=answer)
    elif kind == "numeric":
        row.update(answer=answer)
    return parse_question(json.dumps(row))


QUESTIONS = [q("up"), q("down", answer="A"), q("stay"), q("zig"), q("num", kind="numeric", answer=42)]


def runner(settings, judge=None, reply=reasoner_reply):
    b = Scripted(reply)
    return ItemRunner(Models(b, b, b, judge), settings, GREEDY, Recursion(), None), b


def test_rounds_one_is_round_one_of_the_longest_run_and_budgets_are_equal():
    r, backend = runner(EvalSettings(rounds="1,3", baselines="self-consistency"))
    line = r.run(QUESTIONS[0])
    recs = {rec["condition"]: rec for rec in line["records"]}
    assert list(recs) == ["rounds-1", "rounds-3", "self-consistency"]
    three, one, sc = recs["rounds-3"], recs["rounds-1"], recs["self-consistency"]
    # rounds-3: R1 4+2+5+3, R2 2+5+3, R3 2 = 26 generated tokens. The item is keyed (a choice), so its final answer
    # is selected from the rounds' stated answers (A, B, B: the majority B), not merged: no integration call.
    assert three["tokens"] == 26 and not three["integrated"] and three["calls"] == 8
    assert three["selected"] and three["selection_rule"] == "majority" and three["prediction"] == "B" and three["correct"]
    assert not any("draft answers" in last_user(req) for req in backend.requests)
    assert [x["tokens"] for x in three["rounds"]] == [14, 10, 2]
    # rounds-1 is not generated again: round 1's reasoner calls (thinking 4 + answer 2)
    assert one["derived_from"] == "rounds-3" and one["tokens"] == 6 and one["final_answer"] == three["rounds"][0]["answer"]
    assert sum(1 for req in backend.requests if req.prefill.endswith("<|thinking|>\n") and req.sampling.temperature == 0) == 1
    # samples (6 tokens each) are drawn while spent + mean/2 < 26: 4 samples, 24 tokens, the closest total to 26
    assert sc["budget"] == 26 and sc["samples"] == 4 and sc["tokens"] == 24
    assert abs(sc["tokens"] - sc["budget"]) <= 6 / 2
    assert sc["launched"] == 4 and sc["batches"] == [1, 1, 1, 1] and sc["overshoot_tokens"] == 0  # a scripted model: one at a time
    seeds = [s["seed"] for s in sc["sample_records"]]
    assert len(set(seeds)) == 4 and seeds[0] == item_seed(0, "up", "sample-0") and sc["temperature"] == 0.7
    assert all(req.sampling.temperature == 0.7 for req in backend.requests if req.sampling.seed in seeds)


def test_max_samples_caps_the_budget():
    r, _ = runner(EvalSettings(rounds="3", baselines="self-consistency", max_samples=2))
    sc = r.run(QUESTIONS[0])["records"][-1]
    assert sc["samples"] == 2 and sc["tokens"] == 12 and sc["budget"] == 26  # 26: the keyed rounds-3 selects, no integration


def test_self_consistency_majority_vote_and_best_of_n_with_the_key():
    r, _ = runner(EvalSettings(rounds="1", baselines="self-consistency,best-of-n", selector="key"))
    question = QUESTIONS[4]  # numeric, key 42
    samples = [
        {"seed": i, "prediction": p, "answer": f"Answer: {p}", "correct": p == 42.0, "tokens": 1, "seconds": 0.0}
        for i, p in enumerate((41.0, 42.0, 41.2, 42.1, None, 40.0))
    ]
    sc = r._self_consistency(question, samples, 10)
    # 41 and 41.2 are one vote within 1 % of each other; so are 42 and 42.1: a 2-2 tie goes to the first seen
    assert sc["prediction"] == 41.0 and sc["correct"] is False
    assert sc["votes"] == [{"prediction": 41.0, "count": 2}, {"prediction": 42.0, "count": 2}, {"prediction": 40.0, "count": 1}]
    bon = r._best_of_n(question, samples, 10, "key")
    assert bon["picked"] == 1 and bon["correct"] and bon["selector"] == "key (oracle)"
    nothing = r._self_consistency(question, [{**samples[4]}], 10)
    assert nothing["prediction"] is None and nothing["correct"] is False


def judge_reply(kind):
    def reply(request):
        text = last_user(request)
        a = text.split("Answer A:\n", 1)[1].split("\n\nAnswer B:", 1)[0]
        if kind == "position":
            return " A"
        if kind == "garbage":
            return " hmm, hard to say"
        return " A" if "good" in a else " B"

    return reply


def test_judge_sees_both_orders_and_calls_a_tie_when_they_disagree():
    backend = Scripted(judge_reply("content"), "judge")
    judge = PairwiseJudge(backend)
    c = judge.compare("Why?", "a good answer", "a weak answer", reference="the reference")
    assert c.winner == "first" and c.consistent
    first, second = backend.requests
    assert "Answer A:\na good answer" in last_user(first) and "Answer B:\na weak answer" in last_user(first)
    assert "Answer A:\na weak answer" in last_user(second) and "Answer B:\na good answer" in last_user(second)  # swapped
    assert "the reference" in last_user(first) and first.sampling.temperature == 0
    assert [v.verdict for v in c.verdicts] == ["A", "B"] and [v.raw for v in c.verdicts] == [" A", " B"]
    assert judge.compare("Why?", "a weak answer", "a good answer").winner == "second"

    biased = PairwiseJudge(Scripted(judge_reply("position"), "judge")).compare("Why?", "x", "y")
    assert biased.winner == "tie" and not biased.consistent and [v.winner for v in biased.verdicts] == ["first", "second"]
    garbled = PairwiseJudge(Scripted(judge_reply("garbage"), "judge")).compare("Why?", "x", "y")
    assert garbled.winner == "tie" and [v.verdict for v in garbled.verdicts] == ["?", "?"]
    assert garbled.to_dict()["verdicts"][0]["raw"] == " hmm, hard to say"


@pytest.mark.parametrize(
    "text, verdict",
    [
        ("A", "A"),
        (" B.", "B"),
        ("**T**", "T"),
        ("Tie", "T"),
        ("a tie", "?"),
        ("Answer B is better.", "B"),
        ("<|thinking|>A looks short<|/thinking|> B", "B"),
        ("", "?"),
    ],
)
def test_read_verdict(text, verdict):
    assert read_verdict(text) == verdict


def open_reply(request):
    user = last_user(request)
    if "Compare two answers" in user:
        return judge_reply("content")(request)
    if "[essay]" in user and not request.prefill.endswith("<|thinking|>\n") and "Review" not in user and "Rewrite" not in user and "draft answers" not in user:
        if request.sampling.temperature > 0:
            return "a sampled answer" if request.sampling.seed % 2 else "a good sampled answer"
        return "a good answer" if "improved reasoning" in request.prefill else "a weak answer"
    return reasoner_reply(request)


def test_open_items_are_judged_against_the_single_answer_and_best_of_n_uses_the_judge():
    backend = Scripted(open_reply)
    judge = PairwiseJudge(backend)
    r = ItemRunner(Models(backend, backend, backend, judge), EvalSettings(rounds="1,2", baselines="self-consistency,best-of-n"), GREEDY, Recursion(), None)
    essay = parse_question(json.dumps({"id": "essay", "question": "[essay] Why is nacre tough?", "kind": "open", "reference": "tablets slide"}))
    recs = {rec["condition"]: rec for rec in r.run(essay)["records"]}
    assert "self-consistency" not in recs  # majority vote is undefined for open answers
    assert recs["rounds-1"]["verdict"] is None and recs["rounds-2"]["verdict"] == "win" and recs["rounds-2"]["versus"] == "rounds-1"
    assert len(recs["rounds-2"]["judge"]["verdicts"]) == 2
    bon = recs["best-of-n"]
    assert bon["selector"] == "judge" and len(bon["selection"]) == bon["samples"] - 1 and bon["selection_tokens"] > 0
    assert "good" in bon["final_answer"] or all("good" not in s["answer"] for s in bon["sample_records"])


def test_parallel_items_each_finish_once():
    r, _ = runner(EvalSettings(rounds="1,2", baselines="none"))
    questions = [q(f"q{i}") for i in range(12)]
    script = {f"q{i}": ["A", "B", "B"] for i in range(12)}
    SCRIPT.update(script)
    seen = []
    run_items(questions, r, 4, lambda line: seen.append(line["id"]))
    assert sorted(seen) == sorted(x.id for x in questions)


def test_report_figures_recompute_from_item_records(tmp_path):
    backend = Scripted(reasoner_reply)
    qset = QuestionSet(source="scripted", path="scripted", sha256="0", questions=tuple(QUESTIONS))
    report = evaluate(
        qset,
        tmp_path / "out",
        "scripted",
        settings=EvalSettings(rounds="1,2,3", baselines="self-consistency"),
        sampling=GREEDY,
        progress=False,
        loaded=Models(backend, backend, backend),
    )
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["summary"] == report["summary"]
    items, summary = on_disk["items"], on_disk["summary"]
    assert summarize(items, on_disk["conditions"], on_disk["baseline"]) == summary
    # ... and by hand, independently of summarize()
    for cond in on_disk["conditions"]:
        recs = [it for it in items if it["condition"] == cond]
        k = sum(it["correct"] for it in recs)
        n = len(recs)
        c = summary["conditions"][cond]
        assert (c["correct"], c["keyed"], c["accuracy"]) == (k, n, k / n)
        assert c["readable"] == sum(it["prediction"] is not None for it in recs)
        p = k / n
        centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
        half = Z95 / (1 + Z95**2 / n) * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n))
        assert math.isclose(c["accuracy_ci95"][0], max(0, centre - half), abs_tol=1e-12)
        assert math.isclose(c["mean_tokens"], sum(it["tokens"] for it in recs) / n)
    by = {(it["id"], it["condition"]): it for it in items}
    assert len(by) == len(items) == 5 * 4  # every (item, condition) exactly once
    # the scripted answers give these flips: up, num go wrong→right; down goes right→wrong; zig goes both ways
    steps = summary["flips"]["within_run"]["rounds-3"]
    assert [(s["from"], s["to"], s["right_to_wrong"], s["wrong_to_right"]) for s in steps] == [
        ("round 1", "round 2", 1, 3),
        ("round 2", "round 3", 1, 0),
        ("round 3", "selected", 0, 0),  # keyed items are selected from the rounds (majority), not integrated
    ]
    assert steps[1]["stayed_right"] == 3  # up, stay and num kept their right answer from round 2 to 3
    assert summary["flips"]["versus_baseline"]["rounds-3"] == {"n": 5, "right_to_wrong": 1, "wrong_to_right": 2, "stayed_right": 1, "stayed_wrong": 1, "net": 1}
    assert by[("down", "rounds-1")]["correct"] and not by[("down", "rounds-3")]["correct"]
    assert summary["conditions"]["self-consistency"]["mean_samples"] == by[("up", "self-consistency")]["samples"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| rounds-3 | round 1 → round 2 | 5 | 1 | 3 | +2 |" in md
    assert summary["conditions"]["rounds-1"]["readable"] == 4 and "| 2 / 5 | 4 (80.0 %) |" in md  # num's round 1 names no number
    assert (tmp_path / "out" / "report.png").read_bytes().startswith(b"\x89PNG")
    lines = read_items(tmp_path / "out" / "items.jsonl")
    assert set(lines) == {x.id for x in QUESTIONS} and "transcript" in lines["up"]["records"][1]


def test_concurrency_only_for_servers(tmp_path):
    class Served(Scripted):
        kind = "openai"  # what the OpenAI-compatible backend reports

    qset = QuestionSet(source="scripted", path="scripted", sha256="0", questions=tuple(QUESTIONS))
    settings = EvalSettings(rounds="1,2", baselines="none", concurrency=3)
    for cls, ignored in ((Scripted, True), (Served, False)):
        backend, notes = cls(reasoner_reply), []
        report = evaluate(
            qset,
            tmp_path / cls.__name__,
            "scripted",
            settings=settings,
            sampling=GREEDY,
            progress=False,
            note=notes.append,
            loaded=Models(backend, backend, backend),
        )
        assert any("--concurrency 3 ignored" in n for n in notes) == ignored
        assert report["question_set"]["evaluated"] == len(QUESTIONS)


def calm_reply(request) -> str:
    """``reasoner_reply``, except that the critic finds nothing to fix in the thinking for the [calm] item."""
    user = last_user(request)
    if "Review this reasoning" in user and "[calm]" in user:
        return "All good.\nVerdict: nothing to fix."  # 6 tokens; the verdict is a line of its own
    return reasoner_reply(request)


def test_adaptive_rounds_stop_early_and_the_report_counts_the_tokens_saved(tmp_path):
    SCRIPT["calm"] = ["B", "B", "B"]
    questions = (*QUESTIONS, q("calm"))
    backend = Scripted(calm_reply)
    qset = QuestionSet(source="scripted", path="scripted", sha256="0", questions=questions)
    settings = EvalSettings(rounds="1,3", baselines="none", adaptive=True)
    report = evaluate(qset, tmp_path / "out", "scripted", settings=settings, sampling=GREEDY, progress=False, loaded=Models(backend, backend, backend))
    assert report["conditions"] == ["rounds-1", "rounds-3", "adaptive"]
    by = {(it["id"], it["condition"]): it for it in report["items"]}
    # stay (B, B): the second answer agrees with the first, so no critique of round 2 and no round 3: R1 14 + R2 2
    stay = by[("stay", "adaptive")]
    assert (stay["rounds_run"], stay["stop_reason"], stay["tokens"], stay["tokens_saved"], stay["versus"]) == (2, "answers_agree", 16, 10, "rounds-3")
    assert stay["correct"] and stay["selected"] and stay["max_rounds"] == 3
    # calm: the critic finds nothing to fix after round 1 (thinking 4 + answer 2 + critique 6). The fixed run goes on
    # without a rewrite (round 1's thinking is pre-filled again): 12 + (2 + 6) + 2 = 22.
    calm, calm_fixed = by[("calm", "adaptive")], by[("calm", "rounds-3")]
    assert (calm["rounds_run"], calm["stop_reason"], calm["tokens"]) == (1, "nothing_to_fix", 12)
    assert (calm_fixed["rounds_run"], calm_fixed["stop_reason"], calm_fixed["tokens"], calm["tokens_saved"]) == (3, "rounds", 22, 10)
    assert calm["rounds"][0]["verdict"] == "nothing to fix"
    # the others never agree twice in a row: every round, as many tokens as the fixed run, the same rounds
    for qid in ("up", "down", "zig", "num"):
        a, fixed = by[(qid, "adaptive")], by[(qid, "rounds-3")]
        assert (a["rounds_run"], a["stop_reason"], a["tokens_saved"]) == (3, "rounds", 0)
        assert [r["answer"] for r in a["rounds"]] == [r["answer"] for r in fixed["rounds"]] and a["correct"] == fixed["correct"]
        assert fixed["stop_reason"] == "rounds"  # fixed runs never stop early
    assert all(by[(x.id, "rounds-3")]["rounds_run"] == 3 for x in questions)
    ad = report["summary"]["conditions"]["adaptive"]["adaptive"]
    assert ad == {
        "max_rounds": 3,
        "versus": "rounds-3",
        "mean_rounds": (2 + 1 + 3 * 4) / 6,
        "stopped_early": 2,
        "stop_reasons": {"answers_agree": 1, "nothing_to_fix": 1, "rounds": 4},
        "tokens_saved": 20,
        "tokens_versus": 26 * 5 + 22,
        "saved_fraction": 20 / 152,
    }
    # per round over the items that ran it: round 1 → 2 for the 5 that went on, round 2 → 3 for the 4 that did
    steps = report["summary"]["flips"]["within_run"]["adaptive"]
    assert [(s["from"], s["to"], s["n"]) for s in steps] == [("round 1", "round 2", 5), ("round 2", "round 3", 4), ("last round", "selected", 5)]
    assert (steps[0]["wrong_to_right"], steps[0]["right_to_wrong"], steps[0]["stayed_right"]) == (3, 1, 1)  # up, zig, num corrected; down lost; stay kept
    md = (tmp_path / "out" / "report.md").read_text()
    assert "- adaptive (at most 3 rounds): stopped early on 2 of 6 items (answers agree: 1, nothing to fix: 1, rounds: 4)" in md
    assert "tokens saved against rounds-3: 20 of 152 (13.2 %)" in md
    assert "| adaptive | round 1 → round 2 | 5 | 1 | 3 | +2 | 1 |" in md


def test_adaptive_runs_the_rounds_of_the_fixed_run_even_where_a_second_draw_would_differ(tmp_path):
    """llama.cpp's greedy output depends on what its prompt cache holds: the same first round, drawn again for the
    adaptive condition, once came out with another answer (gr-003: 96 in rounds-3, 5.0 in adaptive). A keyed
    item's adaptive rounds are the fixed run's, cut where the engine stops."""
    seen: dict[str, int] = {}

    def drifting(request) -> str:
        if request.sampling.temperature == 0 and not ("Review this reasoning" in last_user(request) or "Rewrite" in last_user(request)):
            k = repr(request.messages) + request.prefill
            seen[k] = seen.get(k, 0) + 1
            if seen[k] > 1 and not request.prefill.endswith("<|thinking|>\n"):
                return "Answer: A"  # a second draw of the same prompt, another answer
        return calm_reply(request)

    SCRIPT["calm"] = ["B", "B", "B"]
    qset = QuestionSet(source="scripted", path="scripted", sha256="0", questions=(q("calm"), q("zig")))
    settings = EvalSettings(rounds="1,3", baselines="none", adaptive=True)
    backend = Scripted(drifting)
    report = evaluate(qset, tmp_path / "out", "scripted", settings=settings, sampling=GREEDY, progress=False, loaded=Models(backend, backend, backend))
    by = {(it["id"], it["condition"]): it for it in report["items"]}
    for qid, stop in (("calm", 1), ("zig", 3)):
        a, fixed = by[(qid, "adaptive")], by[(qid, "rounds-3")]
        assert [r["answer"] for r in a["rounds"]] == [r["answer"] for r in fixed["rounds"][:stop]]
    assert by[("calm", "adaptive")]["stop_reason"] == "nothing_to_fix" and by[("calm", "adaptive")]["correct"]
    assert by[("zig", "adaptive")]["prediction"] == by[("zig", "rounds-3")]["prediction"]


def test_batched_draws_keep_exactly_the_samples_drawn_one_at_a_time():
    from preflexor_local.eval.samples import draw, kept

    sizes = [7, 3, 9, 4, 6, 5, 8, 2, 7, 3]
    for budget in (1, 10, 17, 30, 44, 200):
        for most in (1, 3, 16):
            # the rule, written out as the sequential loop it replaces
            expected, spent = 0, 0
            while expected < most and expected < len(sizes):
                if expected and spent + (spent / expected) / 2 >= budget:
                    break
                spent += sizes[expected]
                expected += 1
            for batch in (1, 2, 4, 8):
                for estimate in (1, 5, 50):
                    pool = draw(lambda i: {"i": i, "tokens": sizes[i]}, budget, min(most, len(sizes)), batch, estimate)
                    assert [s["i"] for s in pool.samples] == list(range(expected)), (budget, most, batch, estimate)
                    assert pool.launched == sum(pool.batches) >= expected and max(pool.batches) <= batch
                    assert pool.overshoot_tokens == sum(sizes[expected : pool.launched])
                    assert pool.launched - expected < batch or expected == 0  # launching stops once the rule is met
                    assert kept([sizes[i] for i in range(pool.launched)], budget, most)[0] == expected


def test_runs_over_parts_of_a_set_merge_into_the_report_of_one_run(tmp_path):
    """bench/merge_eval.py: two runs over disjoint halves give the summary of one run over all the items."""
    from scripts import load_script

    backend = Scripted(reasoner_reply)
    settings = EvalSettings(rounds="1,2", baselines="self-consistency")

    def run(questions, out):
        qset = QuestionSet(source="scripted", path="scripted", sha256=out, questions=tuple(questions))
        return evaluate(qset, tmp_path / out, "scripted", settings=settings, sampling=GREEDY, progress=False, loaded=Models(backend, backend, backend))

    whole = run(QUESTIONS, "whole")
    half = len(QUESTIONS) // 2
    run(QUESTIONS[:half], "a")
    run(QUESTIONS[half:], "b")
    merged = load_script("bench/merge_eval.py").merge(tmp_path / "merged", [tmp_path / "a", tmp_path / "b"])
    assert merged["summary"] == whole["summary"] and merged["question_set"]["evaluated"] == len(QUESTIONS)
    assert "| rounds-2 |" in (tmp_path / "merged" / "report.md").read_text()


def test_an_older_runs_adaptive_records_are_made_again_from_its_fixed_rounds(tmp_path):
    """bench/merge_eval.py --adaptive-from-fixed: a run whose adaptive rounds were drawn again (before 7a9e4ca) gets
    the records the eval makes now, from its rounds-K transcripts, with no generation."""
    from scripts import load_script

    merge_eval = load_script("bench/merge_eval.py")
    SCRIPT["calm"] = ["B", "B", "B"]
    qset = QuestionSet(source="scripted", path="scripted", sha256="0", questions=(*QUESTIONS, q("calm")))
    backend = Scripted(calm_reply)
    settings = EvalSettings(rounds="1,3", baselines="none", adaptive=True)
    now = evaluate(qset, tmp_path / "run", "scripted", settings=settings, sampling=GREEDY, progress=False, loaded=Models(backend, backend, backend))
    items = tmp_path / "run" / "items.jsonl"
    lines = [json.loads(x) for x in items.read_text().splitlines()]
    for line in lines:  # as an older run left them: a second draw that came out otherwise
        ad = next(r for r in line["records"] if r["condition"] == "adaptive")
        ad.update(rounds_run=1, stop_reason="nothing_to_fix", prediction="A", correct=False, tokens=1)
    items.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert merge_eval.merge(tmp_path / "as-is", [tmp_path / "run"])["summary"] != now["summary"]
    again = merge_eval.merge(tmp_path / "again", [tmp_path / "run"], from_fixed=True)
    assert again["summary"] == now["summary"]
