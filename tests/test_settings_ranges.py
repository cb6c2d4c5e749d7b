"""Ranges are declared once, on the typed settings: the CLI and the Python API refuse the same values with the same words."""

from __future__ import annotations

import pytest
from convert_cli import run_cli

from preflexor_local.config import LoadOptions, Recursion, Sampling
from preflexor_local.errors import UsageError


@pytest.mark.parametrize(
    "args,words",
    [
        (["--ctx", "10"], "--ctx must be at least 64, got 10"),  # was: unexpected ValueError (could not broadcast)
        (["--max-tokens", "0"], "--max-tokens must be at least 1, got 0"),  # was: accepted, one-word answer
        (["--thinking-budget", "0"], "--thinking-budget must be at least 1"),
        (["--top-p", "1.5"], "--top-p must be greater than 0 and at most 1, got 1.5"),
        (["--top-k", "-1"], "--top-k must be at least 0"),
        (["--temperature", "-0.5"], "--temperature must be at least 0"),
        (["--min-p", "2"], "--min-p must be at least 0 and at most 1"),
        (["--recursive", "0"], "--recursive must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--seed", "-3"], "--seed must be at least 0"),
        (["--device", "tpu"], "--device must be one of auto, cuda, mps, cpu"),
        (["--temperature", "nan"], "--temperature must be a finite number, got nan"),  # was: unexpected RuntimeError
        (["--top-p", "inf"], "--top-p must be a finite number, got inf"),
        (["--timeout", "inf"], "--timeout must be a finite number, got inf"),  # passed gt=0
        (["--repeat-penalty", "-inf"], "--repeat-penalty must be a finite number"),
    ],
)
def test_ask_refuses_out_of_range_numbers_in_one_line(args, words):
    code, out, err = run_cli("ask", "Why is bone tough?", "--model", "./no-model-is-loaded.gguf", *args)
    assert code == 2 and words in err and "Traceback" not in err and out == ""
    assert len([line for line in err.splitlines() if line.strip()]) <= 2  # the message and at most a hint


@pytest.mark.parametrize(
    "cmd,words",
    [
        (["train", "orpo", "--model", "m", "-o", "o", "--lr", "-1"], "--lr must be greater than 0"),
        (["train", "orpo", "--model", "m", "-o", "o", "--beta", "-0.1"], "--beta must be at least 0"),
        (["train", "orpo", "--model", "m", "-o", "o", "--steps", "0"], "--steps must be at least 1"),
        (["train", "dpo", "--model", "m", "-o", "o", "--partial-mask", "1.5"], "--partial-mask must be greater than 0 and at most 1"),
        (["index", "add", "docs", "--store", "s.db", "--chunk-tokens", "4"], "--chunk-tokens must be at least 16"),
        (["train", "orpo", "--model", "m", "-o", "o", "--lr", "nan"], "--lr must be a finite number"),
        (["serve", "--keepalive", "inf"], "--keepalive must be a finite number"),
        (["eval", "q.jsonl", "--sample-temperature", "nan"], "--sample-temperature must be a finite number"),
    ],
)
def test_other_commands_refuse_out_of_range_numbers(cmd, words, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(*cmd)
    assert code == 2 and words in err and "Traceback" not in err


def test_python_api_uses_the_same_rule_and_names_the_setting():
    with pytest.raises(UsageError, match="--top-p must be greater than 0") as e:
        Sampling(top_p=0)
    assert e.value.param == "top_p"  # what the server reports as the OpenAI error's "param"
    with pytest.raises(UsageError, match="--ctx must be at least 64"):
        LoadOptions(ctx=8)
    with pytest.raises(UsageError, match="--recursive must be at least 1 and at most 64"):
        Recursion(rounds=65)
    assert Sampling(temperature=0, max_tokens=1).max_tokens == 1 and LoadOptions(ctx=None).ctx is None


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_setting_refuses_nan_and_infinity(value):
    """Each float field of each typed settings class, through the one range check."""
    import dataclasses

    from preflexor_local.config import Settings
    from preflexor_local.eval.settings import EvalSettings
    from preflexor_local.rag.ingest import IndexConfig
    from preflexor_local.serve.settings import ServeSettings
    from preflexor_local.train.config import GenerationConfig, TrainConfig

    checked = 0
    for cls in (Sampling, LoadOptions, Recursion, ServeSettings, EvalSettings, IndexConfig, TrainConfig, GenerationConfig):
        assert issubclass(cls, Settings)
        for f in dataclasses.fields(cls):
            if f.type in ("float", "float | None"):
                with pytest.raises(UsageError, match="must be a finite number") as e:
                    cls(**{f.name: value})
                assert e.value.param == f.name
                checked += 1
    assert checked >= 12


def test_train_lora_type_keeps_adapter_as_a_deprecated_spelling(tmp_path, monkeypatch):
    """`--adapter` meant a file in `ask` and an adapter type in `train`: train says --lora-type, the old flag still works."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("train", "orpo", "--model", "m", "-o", "o", "--adapter", "bogus")
    assert code == 2 and "warning: --adapter is deprecated; use --lora-type" in err and "--lora-type must be one of lora, dora, none" in err
    code, _, err = run_cli("train", "orpo", "--model", "m", "-o", "o", "--lora-type", "bogus")
    assert code == 2 and "deprecated" not in err and "--lora-type must be one of" in err
