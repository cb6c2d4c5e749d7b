"""builtin:grounded: a held-out keyed set whose every key stands in a shipped passage corpus.

The checks read the data as a reviewer would: each item's evidence is a sentence of a passage it names, and
that sentence decides the answer (the correct option shares a content word or number with it, a numeric key
is stated in it or follows in one step from its values and the question's, an exact key is written in it).
"""

import json
import math
import re
import unicodedata
from importlib import resources
from itertools import product
from pathlib import Path

import pytest

from preflexor_local.errors import UsageError
from preflexor_local.eval.corpus import builtin_corpora, load_corpus
from preflexor_local.eval.extract import score
from preflexor_local.eval.questions import LETTERS, builtin_sets, load_questions, parse_question

SETS = Path(str(resources.files("preflexor_local.eval").joinpath("sets")))
STOP = set(
    "about above after also among and are because been before being below between both but can does each for from has have into its"
    " itself more most much near not only other over per such than that the their them then there these they this those through"
    " under very were what when where which while with within without would roughly typically usually".split()
)


@pytest.fixture(scope="module")
def qset():
    return load_questions("builtin:grounded")


@pytest.fixture(scope="module")
def corpus():
    return {p["id"]: p for p in load_corpus("grounded")}


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKD", text.replace("−", "-"))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower().replace("'", "")
    return " ".join(re.sub(r"[^\w.]+|(?<!\d)\.|\.(?!\d)", " ", text).split())


def _content_words(text: str) -> set[str]:
    words = _norm(text).split()
    hyphenated = {w.lower() for w in re.findall(r"\w+(?:-\w+)+", text)}  # C-S-H, Gly-Ala-Gly: a name, not its letters
    return hyphenated | {w.rstrip("s") for w in words if any(c.isdigit() for c in w) or (len(w) >= 4 and w not in STOP)}


_NUM = re.compile(r"(?<![\w.])(-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?:\s*×\s*10\^(-?\d+)|\^(-?\d+))?(\s*(?:%|mol%|percent))?")


def _numbers(text: str) -> set[float]:
    """Every number written in the text, with 10^n, A × 10^n and percentages also read as their values."""
    out: set[float] = set()
    for m in _NUM.finditer(text.replace("−", "-")):
        x = float(m.group(1).replace(",", ""))
        out.add(x)
        if m.group(2):
            out.add(x * 10 ** int(m.group(2)))
        if m.group(3):
            out |= {int(m.group(3)), x ** int(m.group(3))}
        if m.group(4):
            out.add(x / 100)
    return out


def _one_step(a: float, b: float):
    yield from (a + b, a - b, b - a, a * b)
    if b:
        yield a / b
    if a:
        yield b / a
    for base, exp in ((a, b), (b, a)):
        if base > 0 and abs(exp) <= 20:
            yield base**exp


def test_the_set_loads_through_the_question_loader_and_is_listed_as_builtin(qset):
    assert "grounded" in builtin_sets() and not any(name.endswith("-corpus") for name in builtin_sets())
    assert builtin_corpora() == ["grounded"]
    assert len(qset.questions) >= 80 and len({q.id for q in qset.questions}) == len(qset.questions)
    assert all(re.fullmatch(r"gr-\d{3}", q.id) for q in qset.questions)
    kinds = qset.describe()["kinds"]
    n = len(qset.questions)
    assert kinds["open"] == 0 and 0.4 <= kinds["choice"] / n <= 0.6 and 0.2 <= kinds["numeric"] / n <= 0.4 and 0.1 <= kinds["exact"] / n <= 0.3
    letters = [q.answer for q in qset.questions if q.kind == "choice"]
    assert all(len(q.choices) == 4 for q in qset.questions if q.kind == "choice")
    assert max(letters.count(x) for x in "ABCD") - min(letters.count(x) for x in "ABCD") <= 3  # no letter bias to exploit
    assert all(q.topic and q.evidence and q.passages and 1 <= len(q.passages) <= 2 for q in qset.questions)
    assert len({q.topic for q in qset.questions}) >= 25
    # --limit N takes a mixed subset: the first 40 items span most topics and every kind
    head = qset.questions[:40]
    assert len({q.topic for q in head}) >= 25 and {q.kind for q in head} == {"choice", "numeric", "exact"}


def test_the_corpus_holds_enough_self_contained_passages(corpus):
    assert len(corpus) >= 60
    for p in corpus.values():
        assert re.fullmatch(r"g-p\d{3}", p["id"]) and p["source"]
        assert 60 <= len(p["text"].split()) <= 140, p["id"]
        assert p["text"].endswith("."), p["id"]


def test_every_evidence_sentence_stands_verbatim_in_a_passage_the_item_names(qset, corpus):
    used = set()
    for q in qset.questions:
        assert set(q.passages) <= set(corpus), (q.id, q.passages)
        used |= set(q.passages)
        homes = [corpus[pid]["text"] for pid in q.passages if q.evidence in corpus[pid]["text"]]
        assert homes, f"{q.id}: evidence not found in {q.passages}"
        at = homes[0].index(q.evidence)
        # a whole sentence: it starts the passage or follows a full stop, and ends one
        assert (at == 0 or homes[0][at - 2 : at] == ". ") and q.evidence.endswith("."), q.id
    assert len(used) >= 60  # the items reach most of the corpus, not a handful of passages


def test_the_evidence_decides_each_answer(qset):
    for q in qset.questions:
        if q.kind == "choice":
            correct = q.choices[LETTERS.index(q.answer)]
            assert _content_words(correct) & _content_words(q.evidence), f"{q.id}: the correct option shares nothing with its evidence"
        elif q.kind == "exact":
            assert any(f" {_norm(a)} " in f" {_norm(q.evidence)} " for a in q.answer), f"{q.id}: no accepted answer is written in the evidence"
        else:
            key, tol = q.answer, max(q.rel_tolerance, 0.005)
            given, stated = _numbers(q.question), _numbers(q.evidence)
            assert stated, f"{q.id}: the evidence gives no value"

            def close(x, key=key, tol=tol):
                return math.isfinite(x) and abs(x - key) <= tol * abs(key)

            # stated in the evidence, or one step from a value of the evidence and one of the evidence or the question
            direct = any(close(x) for x in stated)
            derived = any(close(x) for a, b in product(stated, stated | given) for x in _one_step(a, b))
            assert direct or derived, f"{q.id}: {key} neither stands in the evidence nor follows in one step from {sorted(stated | given)}"


def test_every_key_is_scored_right_when_stated_as_the_prompt_asks(qset):
    for q in qset.questions:
        key = {"choice": lambda q=q: q.answer, "numeric": lambda q=q: f"{q.answer:g}", "exact": lambda q=q: q.answer[0]}[q.kind]()
        assert score(q, f"Some reasoning first. The answer is {key}.").correct, q.id
        # "Answer:" at a line start is a new turn (a stop string) in the plain completion format of base models
        assert "Answer:" not in q.prompt(), q.id
        # the grounding stays out of what the model is asked
        assert q.evidence not in q.prompt(), q.id


def test_grounding_fields_are_validated_and_unknown_fields_still_refused():
    base = {"id": "x", "question": "Q?", "kind": "exact", "answer": "a"}
    q = parse_question(json.dumps({**base, "evidence": " A sentence. ", "passages": ["g-p001", "g-p002"]}))
    assert q.evidence == "A sentence." and q.passages == ("g-p001", "g-p002")
    assert q.to_dict()["passages"] == ["g-p001", "g-p002"]
    for bad, msg in (
        ({"evidence": ""}, "'evidence' must be a non-empty string"),
        ({"evidence": 3}, "'evidence' must be a non-empty string"),
        ({"passages": []}, "'passages' must be a non-empty list"),
        ({"passages": "g-p001"}, "'passages' must be a non-empty list"),
        ({"passages": ["g-p001", " "]}, "'passages' must be a non-empty list"),
        ({"grounding": "x"}, "unknown field 'grounding'"),
    ):
        with pytest.raises(ValueError, match=msg):
            parse_question(json.dumps({**base, **bad}))
    with pytest.raises(UsageError, match="no built-in corpus named 'nope'"):
        load_corpus("nope")


def test_the_shipped_sets_stay_small():
    size = sum(p.stat().st_size for p in SETS.iterdir() if p.is_file())
    assert size < 2 * 1024 * 1024  # a few hundred kB; the whole package must stay under 20 MB
