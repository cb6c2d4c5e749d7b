"""Role data (reasoner with thinking, critic and integrator without) loads for Phase I; unclosed thinking is refused."""

from __future__ import annotations

import json

import pytest

from preflexor_local.errors import PreflexorError
from preflexor_local.train.data import load_pairs


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


REASONER = {"prompt": "Why is bone tough? Use <|thinking|>.", "chosen": "<|thinking|>\nmineral + collagen\n<|/thinking|>\nBecause.", "rejected": "No."}
CRITIC = {"prompt": "Review this reasoning: ...", "chosen": "1. It never names collagen.", "rejected": "ok"}


def test_critic_and_integrator_rows_need_no_thinking(tmp_path):
    pairs = load_pairs(_write(tmp_path / "roles.jsonl", [REASONER, CRITIC]), require_thinking=True)
    assert len(pairs) == 2


def test_an_opened_thinking_section_must_be_closed(tmp_path):
    bad = {**REASONER, "chosen": "<|thinking|>\nmineral + collagen, and then"}
    with pytest.raises(PreflexorError, match=r"1 of 2 chosen replies have no closing <\|/thinking\|> tag \(lines 2\)"):
        load_pairs(_write(tmp_path / "bad.jsonl", [REASONER, bad]), require_thinking=True)


def test_a_file_without_any_thinking_is_refused_only_when_the_thinking_is_masked(tmp_path):
    path = _write(tmp_path / "none.jsonl", [CRITIC, CRITIC])
    with pytest.raises(PreflexorError, match="the thinking is masked from the loss, but none of its 2 chosen replies") as err:
        load_pairs(path, require_thinking=True, masked=True)
    assert "--no-mask-thinking" in err.value.hint
    # a critic-only Phase II set (the demo recipe's rewrites) trains as it is
    assert len(load_pairs(path, require_thinking=True)) == 2


def test_train_dpo_takes_critic_only_pairs_without_the_mask_and_refuses_them_with_it(tmp_path):
    from convert_cli import run_cli
    from tiny_model import build_tiny_llama

    model = build_tiny_llama(tmp_path / "m")
    data = _write(tmp_path / "critic.jsonl", [CRITIC, {**CRITIC, "chosen": "2. Step 3 skips the mineral."}])
    args = ["train", "dpo", "--model", model, "--data", data, "--steps-per-round", "1", "--max-length", "64", "--no-merge"]
    code, _, err = run_cli(*args, "-o", tmp_path / "masked")
    assert code == 1 and "none of its 2 chosen replies" in err and "Traceback" not in err, err
    code, _, err = run_cli(*args, "-o", tmp_path / "plain", "--no-mask-thinking")
    assert code == 0, err[-2000:]
    assert (tmp_path / "plain" / "adapter" / "adapter_config.json").is_file()


def test_prefill_is_prompt_and_the_replies_continue_it(tmp_path):
    """A reflection example: the thinking is pre-filled (as the engine does), only the reflection + answer are scored."""
    from preflexor_local.prompt import known_template, render_prompt
    from preflexor_local.train.data import render_pair

    row = {
        "prompt": [{"role": "user", "content": "Why is bone tough? Use <|thinking|>."}],
        "prefill": "<|thinking|>\nmineral + collagen\n<|/thinking|>\n<|reflect|>\n",
        "chosen": "I ignored water.\n<|/reflect|>\nBecause.",
        "rejected": "ok",
    }
    pairs = load_pairs(_write(tmp_path / "r.jsonl", [REASONER, row]), require_thinking=True)
    t = known_template("gemma", "<bos>", "<eos>")
    prompt, chosen, rejected = render_pair(t, pairs[1])
    assert prompt == render_prompt(t, row["prompt"], row["prefill"])  # exactly what inference renders
    assert prompt.endswith("<|reflect|>\n") and chosen == "I ignored water.\n<|/reflect|>\nBecause.<end_of_turn>\n"
    assert rejected.startswith("ok") and pairs[1].to_json()["prefill"] == row["prefill"]


def test_target_modules_regex_adapts_only_the_named_blocks(tmp_path):
    """re:REGEX picks modules by full name (PEFT's regex form): here only block 1 of the tiny model gets LoRA."""
    from tiny_model import build_tiny_llama

    from preflexor_local.train.config import TrainConfig
    from preflexor_local.train.session import RunContext
    from preflexor_local.train.trl import open_session

    base = build_tiny_llama(tmp_path / "m")
    cfg = TrainConfig(model=str(base), output=str(tmp_path / "o"), method="orpo", target_modules=r"re:.*layers\.1\.(self_attn\.(q|v)_proj)").resolved()
    session = open_session(cfg, RunContext(tmp_path / "o", log=lambda row: None, quiet=True))
    names = {n.split(".lora_")[0] for n, _ in session.model.named_parameters() if "lora_A" in n}
    session.close()
    assert names and all(".layers.1.self_attn." in n and n.endswith(("q_proj", "v_proj")) for n in names), names
