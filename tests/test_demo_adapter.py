"""The shipped demo adapter: a valid LoRA GGUF for the embedded base, loaded by default, with its chat format."""

from __future__ import annotations

import json

import pytest

from preflexor_local.config import LoadOptions, Sampling
from preflexor_local.gguf_meta import read_gguf
from preflexor_local.models import BASE_ALIAS, DEMO_ADAPTER, demo_adapter_path


def test_shipped_adapter_is_a_small_lora_gguf_for_gemma3():
    assert demo_adapter_path() == DEMO_ADAPTER, "the package must ship preflexor_local/data/demo-adapter.gguf"
    info = read_gguf(DEMO_ADAPTER)  # also proves the file is whole
    assert info.get("general.type") == "adapter" and info.get("adapter.type") == "lora"
    assert info.architecture == "gemma3" and info.get("preflexor.chat_template") == "gemma"
    assert DEMO_ADAPTER.stat().st_size < 20 * 2**20


@pytest.mark.slow
def test_default_is_base_plus_adapter_and_the_base_stays_reachable(gemma_gguf, monkeypatch, tmp_path):
    import numpy as np

    from preflexor_local.backends import load

    monkeypatch.setenv("PREFLEXOR_HOME", str(tmp_path))
    monkeypatch.setattr("preflexor_local.models.default_model_path", lambda quiet=False: gemma_gguf)
    monkeypatch.setattr("preflexor_local.backends.llamacpp.default_model_path", lambda quiet=False: gemma_gguf)
    adapted, base = load(None, LoadOptions(ctx=512)), load(BASE_ALIAS, LoadOptions(ctx=512))
    try:
        assert [a["path"] for a in adapted.describe()["adapters"]] == [str(DEMO_ADAPTER)]
        assert adapted.template.name == "gemma" and "adapters" not in base.describe()
        assert base.template.name == "plain"  # a base model: plain completion format, one-shot examples in the engine
        ids = adapted.encode("Why is spider silk tough?")
        logits = []
        for b in (adapted, base):
            b.llm.reset()
            b.llm.eval(ids)
            logits.append(np.ctypeslib.as_array(b.llm._ctx.get_logits(), shape=(b.llm.n_vocab(),)).copy())
        assert np.abs(logits[0] - logits[1]).max() > 0.1  # the adapter is applied
    finally:
        adapted.close()
        base.close()
    own = load(None, LoadOptions(ctx=512, adapters=(str(DEMO_ADAPTER),)))  # --adapter replaces the demo adapter; the name says so
    try:
        assert own.name == "gemma3-270m (base) + --adapter" and [a["path"] for a in own.describe()["adapters"]] == [str(DEMO_ADAPTER)]
    finally:
        own.close()


@pytest.mark.slow
def test_default_model_answers_in_the_thinking_format(gemma_gguf, monkeypatch, tmp_path):
    """One round at the shipped sampling settings, seeded: the adapter's reasoner closes its own thinking and answers
    (the base never learnt to). Greedy, the shipped adapter's thinking on this question runs past its budget.

    Only the format is checked here. The quality bar this test held (15 words of thinking, a 10-word answer) is
    ``bench/adapter_check.py`` now, and ``bench/demo_quality.py`` measures quality over the held-out questions."""
    from preflexor_local.backends import load
    from preflexor_local.config import Recursion
    from preflexor_local.reasoning.engine import Engine

    monkeypatch.setattr("preflexor_local.backends.llamacpp.default_model_path", lambda quiet=False: gemma_gguf)
    b = load(None, LoadOptions(ctx=1024))
    try:
        t = Engine(b, sampling=Sampling(max_tokens=320, seed=0), recursion=Recursion(rounds=1)).run(
            "What role does the dentin-enamel junction play in stopping cracks that start in the outer enamel of a tooth?"
        )
    finally:
        b.close()
    r = t.rounds[0]
    assert r.thinking_closed and r.thinking.strip() and t.final_answer.strip(), json.dumps(t.to_dict())[:2000]


def test_the_grounded_adapter_ships_and_retrieval_picks_it_for_the_default_model_only():
    from preflexor_local.models import GROUNDED_ADAPTER, GROUNDED_ALIAS, for_retrieval

    info = read_gguf(GROUNDED_ADAPTER)
    assert info.get("general.type") == "adapter" and info.architecture == "gemma3" and info.get("preflexor.chat_template") == "gemma"
    assert demo_adapter_path(GROUNDED_ALIAS) == GROUNDED_ADAPTER and demo_adapter_path(BASE_ALIAS) is None
    assert [for_retrieval(m, True) for m in (None, "default", "gemma3-270m")] == [GROUNDED_ALIAS] * 3
    assert [for_retrieval(m, True) for m in (BASE_ALIAS, "./my.gguf", "http://h/v1")] == [BASE_ALIAS, "./my.gguf", "http://h/v1"]
    assert for_retrieval(None, False) is None
    assert DEMO_ADAPTER.stat().st_size + GROUNDED_ADAPTER.stat().st_size < 20 * 2**20


@pytest.mark.slow
def test_load_roles_with_retrieval_loads_the_grounded_adapter_and_keeps_a_named_critic(gemma_gguf, monkeypatch, tmp_path):
    from preflexor_local.models import GROUNDED_ADAPTER
    from preflexor_local.reasoning.ask import load_roles

    monkeypatch.setenv("PREFLEXOR_HOME", str(tmp_path))
    monkeypatch.setattr("preflexor_local.backends.llamacpp.default_model_path", lambda quiet=False: gemma_gguf)
    reasoner, critic, integrator = load_roles(None, BASE_ALIAS, None, LoadOptions(ctx=256), grounded=True)
    try:
        assert [a["path"] for a in reasoner.describe()["adapters"]] == [str(GROUNDED_ADAPTER)]
        assert reasoner.name.startswith("gemma3-270m + preflexor grounded adapter")
        assert "adapters" not in critic.describe() and integrator is critic  # a named model stays what it names
    finally:
        reasoner.close()
        critic.close()
    plain, *_ = load_roles(None, options=LoadOptions(ctx=256))
    try:
        assert [a["path"] for a in plain.describe()["adapters"]] == [str(DEMO_ADAPTER)]
    finally:
        plain.close()
