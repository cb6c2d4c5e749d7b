"""recipes/seed/check.py: grounded seed records pass, and each broken rule is refused with a message that names it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from scripts import ROOT, load_script

PASSAGE = {
    "source": "Hooke's law in tension",
    "text": "For small deformations most metals obey Hooke's law: tensile stress is proportional to strain, sigma = E x epsilon, "
    "where E is Young's modulus. Stress is the force divided by the cross-sectional area, sigma = F/A. Steels have a Young's "
    "modulus of about 200 GPa, almost independent of carbon content or heat treatment, while aluminium alloys are near 70 GPa.",
}
QUESTION = "Which metal is about three times stiffer than aluminium alloys, according to the passage?"
CHOICES = ["Lead", "Steel", "Tin", "Gold"]
GOOD_THINKING = (
    "**Core Concepts**: Stiffness is Young's modulus; passage [1] gives it for steel and for aluminium alloys.\n\n"
    "**Reasoning Steps**:\n1. Aluminium alloys are near 70 GPa [1].\n2. Steels are about 200 GPa [1], almost independent of heat treatment.\n"
    "3. 200 / 70 is about 2.9, so steel is roughly three times stiffer.\n4. No other option's modulus is given in the passage.\n\n"
    "**Hypothesis**: Steel is the metal about three times stiffer than aluminium alloys [1]. The answer is B."
)
WEAK_THINKING = (
    "**Core Concepts**: Stiffness is Young's modulus; passage [1] gives it for steel and for aluminium alloys.\n\n"
    "**Reasoning Steps**:\n1. Aluminium alloys are near 70 GPa.\n2. Denser metals are stiffer, and gold is the densest option.\n"
    "3. So gold should be about three times stiffer than aluminium.\n\n**Hypothesis**: Gold is the stiffest option. The answer is D."
)
KEYED = {"domain": "mechanics of materials", "question": QUESTION, "passages": [PASSAGE], "kind": "choice", "choices": CHOICES, "key": "B"}
GOOD = {
    "reason": {
        "task": "reason",
        "id": "t-r1",
        **KEYED,
        "thinking": GOOD_THINKING,
        "answer": "Steel. Passage [1] gives steels a Young's modulus of about 200 GPa and aluminium alloys about 70 GPa, "
        "so steel is roughly three times stiffer, whatever its heat treatment. The answer is B.",
    },
    "refine-fix": {
        "task": "refine",
        "id": "t-f1",
        **KEYED,
        "weak_thinking": WEAK_THINKING,
        "critique": "1. Step 2 ranks stiffness by density, but passage [1] gives moduli directly: steel about 200 GPa, "
        "aluminium alloys near 70 GPa. Replace the density argument with the ratio 200 / 70.\n"
        "2. The hypothesis names gold, whose modulus [1] never gives; conclude steel (B).\nVerdict: fix.",
        "improved_thinking": GOOD_THINKING,
        "verdict": "fix",
    },
    "refine-nothing": {
        "task": "refine",
        "id": "t-n1",
        **KEYED,
        "weak_thinking": GOOD_THINKING,
        "critique": "1. Steps 1-2 match passage [1]: about 200 GPa for steel and 70 GPa for aluminium alloys, a ratio near 3.\nVerdict: nothing to fix.",
        "verdict": "nothing to fix",
    },
    "integrate": {
        "task": "integrate",
        "id": "t-i1",
        "domain": "mechanics of materials",
        "question": "How stiff is steel compared with aluminium alloys, according to the passage?",
        "passages": [PASSAGE],
        "kind": "numeric",
        "key": 2.86,
        "tolerance": 0.05,
        "drafts": ["Steel is about 200 GPa and aluminium 70 GPa, so about 2.9 times. The answer is 2.9.", "They are equally stiff. The answer is 1."],
        "final": "Passage [1] gives steels about 200 GPa and aluminium alloys about 70 GPa, so steel is 200 / 70 = 2.86 times stiffer; "
        "the claim that they are equally stiff contradicts [1]. The answer is 2.86.",
    },
}


@pytest.fixture(scope="module")
def checker():
    return load_script("recipes/seed/check.py")


def run(checker, tmp_path: Path, *records: dict, name: str = "part.jsonl") -> int:
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return checker.check(str(path))


def test_good_grounded_records_pass(checker, tmp_path, capsys):
    assert run(checker, tmp_path, *GOOD.values()) == 0
    assert "problems: 0" in capsys.readouterr().out


def broken(name: str, **changes) -> dict:
    r = copy.deepcopy(GOOD[name])
    for field, value in changes.items():
        if value is None:
            del r[field]
        else:
            r[field] = value
    return r


@pytest.mark.parametrize(
    "record, message",
    [
        (broken("reason", answer=GOOD["reason"]["answer"].replace("is B.", "is C.")), "ends with answer 'C', but the key is 'B'"),
        (broken("reason", thinking=GOOD_THINKING.replace(" The answer is B.", "")), 'thinking must end with "The answer is B."'),
        (broken("reason", answer=GOOD["reason"]["answer"].replace("Passage [1]", "Passage [2]")), "answer cites [2] but the record has 1 passage(s)"),
        (broken("reason", choices=CHOICES[:3]), "choices must be 4 distinct non-empty strings"),
        (broken("reason", kind="open", choices=None, key=None), "states 'The answer is ...', but an open record has no key"),
        (broken("refine-fix", critique=GOOD["refine-fix"]["critique"].replace("\nVerdict: fix.", "")), 'critique must end with the line "Verdict: fix."'),
        (broken("refine-fix", improved_thinking=None), "a fix record needs improved_thinking"),
        (broken("refine-fix", weak_thinking=GOOD_THINKING), "weak_thinking of a fix record states the key"),
        (broken("refine-nothing", verdict="fix"), 'critique must end with the line "Verdict: fix."'),
        (broken("refine-nothing", improved_thinking=GOOD_THINKING), "a nothing-to-fix record has no improved_thinking"),
        (broken("integrate", final=GOOD["integrate"]["final"].replace("is 2.86.", "is 3.2.")), "final ends with answer '3.2', but the key is 2.86"),
        (broken("integrate", passages=[{"source": "x", "text": "too short"}]), "passage 1 has 2 words"),
    ],
)
def test_broken_rule_is_refused(checker, tmp_path, capsys, record, message):
    assert run(checker, tmp_path, record) >= 1
    assert message in capsys.readouterr().out


def test_ids_unique_across_files(checker, tmp_path, capsys):
    (tmp_path / "a.jsonl").write_text(json.dumps(GOOD["reason"]) + "\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(json.dumps(GOOD["reason"]) + "\n", encoding="utf-8")
    assert checker.main([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]) == 1
    assert "duplicate id t-r1" in capsys.readouterr().out


def test_shipped_seed_parts_pass(checker, capsys):
    parts = sorted(str(p) for p in (ROOT / "recipes" / "seed").glob("part-*.jsonl"))
    assert parts and checker.main(parts) == 0, capsys.readouterr().out
