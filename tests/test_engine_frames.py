"""Every engine call comes from the frame table: the requests and greedy tokens are those the engine made before the
table (``tests/data/engine_golden.json``, recorded from the engine as it was at 173e6df; unchanged by the table at
702cf94), with the small-model guards on. Re-recorded since for one change of wording: the critic's verdict line.

Regenerate only on purpose: ``PREFLEXOR_REGEN_GOLDEN=1 python -m pytest tests/test_engine_frames.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_engine import Recording, Scripted, scripted_reply

from preflexor_local.backends import load
from preflexor_local.config import Recursion, Sampling
from preflexor_local.reasoning.engine import Engine

GOLDEN = Path(__file__).parent / "data" / "engine_golden.json"
GREEDY = Sampling(temperature=0, repeat_penalty=1.0, dry_multiplier=0.0, max_tokens=10)


def _request(r) -> dict:
    return {
        "messages": r.messages,
        "prefill": r.prefill,
        "stop": list(r.stop),
        "stops_after": [list(p) for p in r.stops_after],
        "dry_source": r.dry_source,
        "max_tokens": r.max_tokens,
    }


def _record(backend, sampling: Sampling, question: str, **recursion) -> dict:
    rec = Recording(backend)
    context = recursion.pop("context", None)
    # the guards on, every round run: the engine as it was (before the table, both were always so)
    t = Engine(rec, sampling=sampling, recursion=Recursion(**recursion, guards="on", early_stop=False), context=context).run(question)
    return {
        "requests": [_request(r) for r in rec.requests],
        "rounds": [[r.thinking, r.reflection, r.answer, r.critique, r.improved_thinking] for r in t.rounds],
        "final": t.final_answer,
        "finish": [c.finish_reason for c in t.calls],
    }


@pytest.fixture(scope="module")
def scenarios(tiny_llama, gemma_gguf, default_on_gemma):
    tiny = load(str(tiny_llama))
    ctx = [{"id": 7, "text": "Nacre has staggered tablets.", "source": "nacre.md line 3"}]
    out = {
        "tiny-thinking-3": _record(tiny, GREEDY, "Why is spider silk tough?", rounds=3),
        "tiny-reflect-2": _record(tiny, GREEDY, "Why is spider silk tough?", rounds=2, mode="reflect", thinking_budget=6),
        "tiny-context-1": _record(tiny, GREEDY, "How does nacre stop cracks?", rounds=2, integrate=False, context=ctx),
        "scripted-headings": _record(Scripted(scripted_reply("\n\n**Reasoning Steps**:\n1. again")), Sampling(temperature=0, max_tokens=64), "Q?", rounds=2),
    }
    tiny.close()
    default = load(None)  # the embedded model with the demo adapter: the guards were written for it
    out["default-2"] = _record(default, Sampling(temperature=0, max_tokens=40), "Why is spider silk so tough?", rounds=2)
    default.close()
    return json.loads(json.dumps(out))


@pytest.fixture(scope="module")
def default_on_gemma(gemma_gguf, isolated_home):
    """The default model resolved to the session's assembled GGUF, in an isolated home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PREFLEXOR_HOME", str(isolated_home))
    mp.setattr("preflexor_local.backends.llamacpp.default_model_path", lambda quiet=False: gemma_gguf)
    yield
    mp.undo()


@pytest.mark.slow
def test_the_frame_table_makes_the_requests_and_tokens_the_engine_made_before(scenarios):
    if os.environ.get("PREFLEXOR_REGEN_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(scenarios, indent=1, ensure_ascii=False) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert set(scenarios) == set(golden)
    for name in golden:
        assert scenarios[name] == golden[name], name
