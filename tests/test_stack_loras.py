"""The demo recipe's Phase II export: two LoRAs stacked into one rank-(r1 + r2) LoRA apply exactly what the two do in turn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from convert_fixtures import build_tiny
from scripts import load_script
from test_lora_gguf import make_adapter, merged


@pytest.fixture(scope="module")
def recipe():
    return load_script("recipes/demo_adapter.py")


def _logits(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([[1, 5, 9, 14, 3, 7]])).logits[0]


def test_stacked_lora_equals_second_on_first_merged(recipe, tmp_path):
    base = build_tiny(tmp_path / "base", arch="llama")
    first = make_adapter(base, tmp_path / "first", seed=1, r=4, lora_alpha=8)
    phase1 = merged(base, first, tmp_path / "phase1")
    second = make_adapter(phase1, tmp_path / "second", seed=2, r=2, lora_alpha=8)  # Phase II: a new LoRA on Phase I merged
    both = recipe.stack_loras(first, second, tmp_path / "both")
    cfg = json.loads((both / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"]) == (6, 6)
    want = _logits(merged(phase1, second, tmp_path / "want"))
    got = _logits(merged(base, both, tmp_path / "got"))
    assert float((want - got).abs().max()) < 1e-4
    # and the second LoRA is really in it: the first alone is far from that
    assert float((want - _logits(phase1)).abs().max()) > 1e-2


def test_refuses_scales_it_does_not_fold(recipe, tmp_path):
    base = build_tiny(tmp_path / "base", arch="llama")
    first = make_adapter(base, tmp_path / "first", seed=1, use_rslora=True)
    second = make_adapter(base, tmp_path / "second", seed=2)
    with pytest.raises(SystemExit, match="use_rslora"):
        recipe.stack_loras(first, second, tmp_path / "both")


@pytest.mark.slow
def test_phase2_refuses_a_phase1_other_than_the_one_merged(recipe, tmp_path):
    """Phase II trains on merged Phase I and ships stacked on it: a rerun naming another Phase I is refused by name."""
    base = build_tiny(tmp_path / "base", arch="llama")
    first = make_adapter(base, tmp_path / "first", seed=1)
    other = make_adapter(base, tmp_path / "other", seed=2)
    merged_dir = recipe.merged_phase1(tmp_path / "work", base, first)
    stamp = (merged_dir / "model.safetensors").stat().st_mtime_ns
    assert recipe.merged_phase1(tmp_path / "work", base, first) == merged_dir  # the same Phase I: kept, not merged again
    assert (merged_dir / "model.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(SystemExit, match=f"merged from {first.resolve()}, not {other.resolve()}"):
        recipe.merged_phase1(tmp_path / "work", base, other)


def test_phase2_trains_on_the_roles_asked_for_only(recipe, tmp_path):
    pairs = tmp_path / "pairs-phase2.jsonl"
    rows = [
        {"prompt": "q", "chosen": f"c{i}", "rejected": f"r{i}", "meta": {"key": f"x{i}:{role}", "role": role}}
        for i, role in enumerate(["rewrite", "critique", "rewrite"])
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = [json.loads(line)["chosen"] for line in recipe.phase2_training_set(pairs, ("rewrite",)).read_text().splitlines()]
    assert got == ["c0", "c2"]
    assert len(recipe.phase2_training_set(pairs, ("critique", "rewrite")).read_text().splitlines()) == 3


def test_a_pair_torn_by_a_kill_is_redone_and_the_file_stays_whole(recipe, tmp_path):
    pairs = tmp_path / "pairs-phase2.jsonl"
    row = lambda i: {"prompt": "q", "chosen": f"c{i}", "rejected": f"r{i}", "meta": {"key": f"x{i}:rewrite", "role": "rewrite"}}  # noqa: E731
    pairs.write_text(json.dumps(row(0)) + "\n" + json.dumps(row(1))[:25])  # killed while writing pair 1
    assert recipe.done_keys(pairs) == {"x0:rewrite"}
    with recipe.Appender(pairs) as fh:  # the resumed run writes pair 1 again
        fh.append(row(1))
    got = [json.loads(line)["chosen"] for line in recipe.phase2_training_set(pairs, ("rewrite",)).read_text().splitlines()]
    assert got == ["c0", "c1"] and recipe.done_keys(pairs) == {"x0:rewrite", "x1:rewrite"}


def test_continued_phase2_reviews_and_rewrites_the_grounded_records_only_in_its_own_files(recipe, tmp_path):
    """The critic's verdict is what the continued adapter lacks: its Phase II takes every grounded review, those of
    nothing to fix included, and every grounded rewrite; its training file does not overwrite Phase II's."""
    from preflexor_local.format import ThinkingFormat

    got = recipe.phase2_examples(ThinkingFormat(), ("critique", "rewrite"), grounded_only=True)
    assert got and all(rec.get("passages") for rec, _ in got)
    reviews = [ex for _, ex in got if ex[0] == "critique"]
    assert sum("nothing to fix" in ex[3].lower() for ex in reviews) >= 0.3 * len(reviews)
    assert len(reviews) == sum(1 for r in recipe.seed_records("train") if r["task"] == "refine" and r.get("passages"))
    assert {ex[0] for _, ex in recipe.phase2_examples(ThinkingFormat(), ("rewrite",), grounded_only=False)} == {"rewrite"}
    row = {"prompt": "q", "chosen": "c", "rejected": "r", "meta": {"key": "x:critique", "role": "critique"}}
    for name in ("pairs-phase2.jsonl", "pairs-continue-phase2.jsonl"):
        (tmp_path / name).write_text(json.dumps(row) + "\n")
    outs = {recipe.phase2_training_set(tmp_path / n, ("critique",)).name for n in ("pairs-phase2.jsonl", "pairs-continue-phase2.jsonl")}
    assert outs == {"pairs-phase2-critique.jsonl", "pairs-continue-phase2-critique.jsonl"}
