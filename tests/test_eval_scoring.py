"""Eval scoring without models: the extractor on messy outputs, intervals, flips, question files."""

import json
import math
import tomllib
from pathlib import Path

import pytest

from preflexor_local.errors import UsageError
from preflexor_local.eval.extract import extract_choice, extract_number, extract_phrase, numbers_match, phrase_matches, score
from preflexor_local.eval.questions import QuestionFileError, builtin_sets, load_questions, parse_question
from preflexor_local.eval.settings import EvalSettings
from preflexor_local.eval.stats import flips, mean_ci, wilson

CHOICES = ("Aragonite", "Hydroxyapatite", "Amorphous silica", "Magnetite")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Answer: B", "B"),
        ("The answer is (b).", "B"),
        ("**Answer:** C", "C"),
        ("Final answer: **D**", "D"),
        ("\\boxed{D}", "D"),
        ("$\\boxed{\\text{C}}$", None),  # not a plain letter in the box: no guess
        ("B) Hydroxyapatite, because bone is mineralised collagen.", "B"),
        ("(C) amorphous silica", "C"),
        ("C", "C"),
        ("  d. ", "D"),
        ("I think A is wrong. The correct option is C.", "C"),
        ("Answer: C\n\nOption A is wrong because calcite is softer.", "C"),  # an explanation naming another option
        ("The answer is not A; the answer is D", "D"),  # the last answer marker wins
        ("Answer: A, since nacre is made of aragonite", "A"),
        ("answer: a", "A"),
        ("I choose B.", "B"),
        ("the answer is a mineral called magnetite", "D"),  # "a" is an article; the option text decides
        ("Nacre is mostly aragonite.", "A"),
        ("It is made of aragonite, not magnetite.", None),  # two options named: ambiguous
        ("A good question. Let me think.", None),
        ("A stiff material", None),
        ("", None),
        ("<|thinking|>", None),
    ],
)
def test_choice_extraction(text, expected):
    assert extract_choice(text, CHOICES) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Answer: 200 MPa", 200),
        ("σ = F/A = 40000/2e-4 = 2.0 × 10^8 Pa = 200 MPa", 200),  # the last '=' holds the result
        ("The strain is 5 × 10^-4.", 5e-4),
        ("strain = 5·10⁻⁴", 5e-4),
        ("Final answer: $2.0 \\times 10^{8}$ Pa", 2e8),
        ("\\boxed{0.25}", 0.25),
        ("The factor is 1/4", 0.25),
        ("about 6.022e23 particles", 6.022e23),
        ("The organic layer is **26.3 nm** thick, from 0.5 µm × 0.05/0.95.", 26.3),
        ("Answer: −0.3 %", -0.3),  # unicode minus
        ("It's 1,000 N/m", 1000),
        ("Water, H2O, has a molar mass of 18.02 g/mol", 18.02),  # the 2 in H2O is not a number
        ("The answer is 3. First I tried 5 and 7.", 3),
        ("Rounding 5.605 to 5.6 MPa√m gives 5.6", 5.6),
        ("no numbers here", None),
        # grounded answers cite passages: a citation is not the answer
        ("Silicon absorbs below about 1.1 micrometres [1]. The answer is N.", 1.1),
        ("The answer is [1] about 450 MPa [2, 3].", 450),
        ("The dentin-enamel junction stops cracks [1].", None),
    ],
)
def test_number_extraction(text, expected):
    got = extract_number(text)
    if expected is None:
        assert got is None
    else:
        assert got is not None and math.isclose(got, expected, rel_tol=1e-9)


def test_numeric_tolerance_is_relative_and_absolute_at_zero():
    assert numbers_match(201.9, 200, 0.01) and not numbers_match(202.1, 200, 0.01)
    assert numbers_match(0.004, 0, 0.01) and not numbers_match(0.02, 0, 0.01)
    assert numbers_match(-5.0, -5.0, 0.0)


def test_exact_phrases_match_whole_words_case_and_punctuation_free():
    assert phrase_matches(extract_phrase("Answer: Hooke's law."), ("Hookes law",))
    assert phrase_matches(extract_phrase("It is CELLULOSE. Starch is different."), ("cellulose",))
    assert not phrase_matches(extract_phrase("Answer: silicone rubber"), ("silicon",))  # whole words only
    assert phrase_matches(extract_phrase("The answer is silicon (Si)"), ("Si",))


def test_score_by_kind():
    choice = parse_question(json.dumps({"id": 1, "question": "q", "kind": "choice", "choices": ["x", "y"], "answer": "y"}))
    assert choice.answer == "B" and score(choice, "Answer: B").correct and not score(choice, "Answer: A").correct
    assert score(choice, "no idea").prediction is None and score(choice, "no idea").correct is False
    num = parse_question(json.dumps({"id": 2, "question": "q", "kind": "numeric", "answer": 5.605, "tolerance": 0.02}))
    assert score(num, "K ≈ 5.6 MPa√m").correct and not score(num, "Answer: 6").correct
    op = parse_question(json.dumps({"id": 3, "question": "q", "kind": "open", "reference": "r"}))
    assert score(op, "anything").correct is None


def test_wilson_interval_known_values():
    lo, hi = wilson(5, 10)
    assert math.isclose(lo, 0.2366, abs_tol=1e-4) and math.isclose(hi, 0.7634, abs_tol=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and math.isclose(hi, 0.2775, abs_tol=1e-4)
    lo, hi = wilson(10, 10)
    assert math.isclose(lo, 0.7225, abs_tol=1e-4) and hi == 1.0
    assert wilson(0, 0) is None
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_mean_interval():
    mean, ci = mean_ci([10, 20, 30])
    assert mean == 20 and math.isclose(ci[1] - mean, 1.959963984540054 * 10 / math.sqrt(3))
    assert mean_ci([7]) == (7, None) and mean_ci([]) == (None, None)


def test_flip_counts():
    f = flips([(True, False), (False, True), (False, True), (True, True), (False, False), (None, True)])
    assert f == {"n": 5, "right_to_wrong": 1, "wrong_to_right": 2, "stayed_right": 1, "stayed_wrong": 1, "net": 1}


BAD_LINES = {
    "not json": ("{oops", "not valid JSON"),
    "not an object": ("[1, 2]", "expected a JSON object"),
    "unknown field": ('{"id": 1, "question": "q", "kind": "open", "difficulty": 3}', "unknown field 'difficulty'"),
    "no question": ('{"id": 1, "kind": "open"}', "'question' must be a non-empty string"),
    "bad kind": ('{"id": 1, "question": "q", "kind": "mcq"}', "'kind' must be one of"),
    "letter out of range": ('{"id": 1, "question": "q", "kind": "choice", "choices": ["a", "b"], "answer": "C"}', "'answer' must be a letter A–B"),
    "one choice": ('{"id": 1, "question": "q", "kind": "choice", "choices": ["a"], "answer": "A"}', "2 to 26"),
    "numeric as text": ('{"id": 1, "question": "q", "kind": "numeric", "answer": "5"}', "'answer' must be a finite number"),
    "bad tolerance": ('{"id": 1, "question": "q", "kind": "numeric", "answer": 5, "tolerance": 2}', "relative tolerance"),
    "open with answer": ('{"id": 1, "question": "q", "kind": "open", "answer": "x"}', "open questions have no 'answer'"),
    "bool id": ('{"id": true, "question": "q", "kind": "open"}', "'id' must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_bad_question_lines_are_named_with_file_and_line(tmp_path, case):
    line, expected = BAD_LINES[case]
    good = '{"id": "ok", "question": "Is nacre tough?", "kind": "exact", "answer": "yes"}'
    path = tmp_path / "q.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(QuestionFileError) as err:
        load_questions(str(path))
    assert str(err.value).startswith(f"{path}:3: ") and expected in str(err.value)
    assert err.value.hint


def test_duplicates_several_bad_lines_and_empty_files(tmp_path):
    path = tmp_path / "q.jsonl"
    line = '{"id": "a", "question": "q", "kind": "exact", "answer": "x"}'
    path.write_text("\n".join([line, line, "{", "{"]) + "\n")
    with pytest.raises(QuestionFileError, match=r"q.jsonl:2: duplicate id 'a' \(first on line 1\) \(and 2 more bad lines: 3, 4\)"):
        load_questions(str(path))
    path.write_text("\n\n")
    with pytest.raises(QuestionFileError, match="no questions"):
        load_questions(str(path))
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(QuestionFileError, match="not UTF-8"):
        load_questions(str(path))
    with pytest.raises(UsageError, match="question file not found"):
        load_questions(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UsageError, match="no built-in question set named 'nope'") as err:
        load_questions("builtin:nope")
    assert "builtin:materials" in err.value.hint


def test_builtin_set_is_valid_balanced_and_ships_in_the_wheel():
    assert "materials" in builtin_sets()
    qs = load_questions("builtin:materials")
    kinds = qs.describe()["kinds"]
    assert len(qs.questions) >= 60 and kinds["choice"] + kinds["numeric"] > 0.8 * len(qs.questions) and kinds["open"] >= 3
    assert all(q.reference for q in qs.questions if q.kind == "open")
    letters = [q.answer for q in qs.questions if q.kind == "choice"]
    assert max(letters.count(x) for x in "ABCD") - min(letters.count(x) for x in "ABCD") <= 3  # no letter bias to exploit
    # every keyed item is answerable by its own key, stated the way the prompt asks (and the usual other way)
    for q in qs.questions:
        key = {"choice": lambda: q.answer, "numeric": lambda: f"{q.answer:g}", "exact": lambda: q.answer[0]}.get(q.kind)
        if key:
            assert score(q, f"Some reasoning first. The answer is {key()}.").correct, q.id
            assert score(q, f"Answer: {key()}").correct, q.id
        # "Answer:" at a line start is a new turn (a stop string) in the plain completion format of base models
        assert "Answer:" not in q.prompt(), q.id
    root = Path(__file__).resolve().parent.parent
    tool = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "preflexor_local.eval" in tool["packages"] and "sets/*.jsonl" in tool["package-data"]["preflexor_local.eval"]


def test_eval_settings_parse_and_refuse():
    s = EvalSettings(rounds="3, 1,3", baselines="best-of-n,self-consistency")
    assert s.rounds == (1, 3) and s.baselines == ("best-of-n", "self-consistency") and s.max_rounds == 3
    assert EvalSettings(baselines="none").baselines == ()
    for kwargs, message in [
        ({"rounds": "0,2"}, "at least 1"),
        ({"rounds": "1,x"}, "whole numbers"),
        ({"rounds": ""}, "at least one"),
        ({"baselines": "majority"}, "unknown --baselines value 'majority'"),
        ({"selector": "coin"}, "--selector"),
        ({"concurrency": 0}, "--concurrency"),
        ({"sample_temperature": -1}, "--sample-temperature"),
    ]:
        with pytest.raises(UsageError, match=message):
            EvalSettings(**kwargs)


def test_a_cited_passage_is_not_an_exact_answer_or_an_option():
    from preflexor_local.answers import extract_choice, extract_phrase

    assert extract_phrase("The answer is [1].") is None
    assert extract_phrase("The answer is Bouligand [1].") == "Bouligand"
    assert extract_choice("Passage [2] says so. The answer is B [2].", ("x", "y", "z", "w")) == "B"
