"""Helpers for the training and data-generation tests (pairs files, a scripted judge, a tiny run)."""

from __future__ import annotations

import json
from pathlib import Path

from scripted import Scripted

THINK = "<|thinking|>\nbeta sheets and amorphous chains share the load\n<|/thinking|>\n"


def pair_rows(n: int = 4) -> list[dict]:
    return [
        {
            "prompt": f"Why is spider silk tough ({i})? Use <|thinking|>.",
            "chosen": THINK + "Because of its hierarchical structure.",
            "rejected": "Bone is stiff." if i % 2 else "<|thinking|>\nnacre tablets\nBone",  # one rejected never closes
        }
        for i in range(n)
    ]


def write_pairs(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def ScriptedBackend(reply, finish=None) -> Scripted:
    """The suite's scripted model answering from the prompt alone: ``reply(last user message) -> str``."""
    return Scripted(lambda request: reply(request.messages[-1]["content"]), finish=finish)


def fast_generation(teacher_tokens: int = 10, student_tokens: int = 10, k_random: int | None = None) -> list[str]:
    """Pair-generation flags that keep a tiny run to seconds (one category, a few tokens, small contexts)."""
    flags = ["--categories", "Hypothesis", "--teacher-max-tokens", str(teacher_tokens), "--student-max-tokens", str(student_tokens)]
    flags += ["--k-random", str(k_random)] if k_random is not None else []
    return [*flags, "--k-search", "1", "--max-context-chars", "300", "--teacher-ctx", "4096"]


def generate_argv(store, model, out, n: int = 1, *extra: str) -> list[str]:
    """``data generate`` with ``model`` as teacher and student, ``n`` pairs into ``out``."""
    return ["data", "generate", "--store", str(store), "--teacher", str(model), "--student", str(model), "-n", str(n), "-o", str(out), *extra]


def one_step_phases(phase1: int, phase2: int) -> list[str]:
    """``train preflexor`` rounds of one step on one generated pair each."""
    return ["--phase1-rounds", str(phase1), "--phase2-rounds", str(phase2), "--steps-per-round", "1", "--pairs-per-round", "1"]
