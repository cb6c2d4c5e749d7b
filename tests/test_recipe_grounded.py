"""The demo recipe renders grounded seed records through the engine's own call frames, and redoes stale pairs."""

from __future__ import annotations

import json

import pytest
from scripts import load_script

from preflexor_local.format import ThinkingFormat
from preflexor_local.reasoning.frames import FRAMES, Context, Guards

FMT = ThinkingFormat()


@pytest.fixture(scope="module")
def recipe():
    return load_script("recipes/demo_adapter.py")


def _record(recipe, prefix: str, **want) -> dict:
    return next(r for r in recipe.seed_records("train") if r["id"].startswith(prefix) and all(r.get(k) == v for k, v in want.items()))


def test_a_keyed_reason_record_is_asked_as_eval_asks_it_with_its_passages_as_context(recipe):
    rec = _record(recipe, "gr-r", kind="choice")
    [(role, msgs, prefill, chosen)] = recipe.role_examples(rec, FMT)[:1]
    user = msgs[-1]["content"]
    assert role == "reasoner" and prefill == "" and user.startswith("Context:\n[1] (")
    assert "\nA) " in user and 'End your reply with "The answer is X."' in user and rec["passages"][0]["text"].strip() in user
    assert chosen.startswith(FMT.think_start) and chosen.rstrip().endswith(f"The answer is {rec['key']}.")


def test_refine_records_use_the_grounded_critic_frames_and_a_nothing_to_fix_review_has_no_rewrite(recipe):
    fix = _record(recipe, "p8-f", verdict="fix")
    examples = recipe.role_examples(fix, FMT)
    assert [e[0] for e in examples] == ["critique", "rewrite"]
    ctx = Context(fmt=FMT, question=recipe.question_text(fix), guards=dict.fromkeys(("reasoner", "critic", "integrator"), Guards(True)))
    want = FRAMES["critique"].build(ctx, thinking=fix["weak_thinking"].strip(), passages=tuple(fix["passages"]))
    assert examples[0][1] == want.messages and "Passages:\n[1] (" in examples[0][1][-1]["content"]
    assert examples[1][2] == "**Core Concepts**:" and (examples[1][2] + examples[1][3]) == fix["improved_thinking"].strip()  # the engine's opening
    ok = _record(recipe, "p8-f", verdict="nothing to fix")
    assert [e[0] for e in recipe.role_examples(ok, FMT)] == ["critique"]
    # an older refine record: its review gets the verdict line the prompt asks for
    old = next(r for r in recipe.seed_records("train") if r["task"] == "refine" and not r.get("passages"))
    assert recipe.role_examples(old, FMT)[0][3].endswith("\nVerdict: fix.")


def test_pairs_made_from_an_older_seed_or_wording_are_dropped_and_redone(recipe, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    current = {"a:critique": ("critique", [{"role": "user", "content": "new wording"}], "", "review")}
    rows = [
        {"prompt": [{"role": "user", "content": "new wording"}], "chosen": "review", "rejected": "x", "meta": {"key": "a:critique"}},
        {"prompt": [{"role": "user", "content": "old wording"}], "chosen": "review", "rejected": "x", "meta": {"key": "a:critique"}},
        {"prompt": [{"role": "user", "content": "gone"}], "chosen": "c", "rejected": "x", "meta": {"key": "removed:critique"}},
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert recipe.drop_stale(pairs, current) == {"a:critique"}
    assert [json.loads(line) for line in pairs.read_text().splitlines()] == rows[:1]


def test_continue_trains_on_every_grounded_pair_and_a_seeded_replay_of_the_rest(recipe, tmp_path):
    grounded = next(r["id"] for r in recipe.seed_records("train") if r.get("passages"))
    older = [r["id"] for r in recipe.seed_records("train") if not r.get("passages")][:5]
    rows = [{"prompt": [], "chosen": "c", "rejected": "r", "meta": {"key": f"{i}:reasoner"}} for i in [grounded, *older]]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = recipe.continue_training_set(tmp_path, tmp_path / "pairs.jsonl", replay=2, seed=0)
    keys = [json.loads(line)["meta"]["key"] for line in out.read_text().splitlines()]
    assert len(keys) == 3 and f"{grounded}:reasoner" in keys
    again = recipe.continue_training_set(tmp_path, tmp_path / "pairs.jsonl", replay=2, seed=0)
    assert [json.loads(line)["meta"]["key"] for line in again.read_text().splitlines()] == keys  # seeded: a resumed run trains on the same
