"""Evaluation: does recursion help on *your* model? Rounds against equal-budget baselines, honestly scored.

Modules, one job each: ``questions`` (the JSONL format, validation, built-in
sets), ``settings`` (the typed ``EvalSettings``), ``conditions`` (what runs on
an item and its token budget), ``samples`` (the budget rule; samples drawn in
batches that decode together), ``grounding`` (``--rag``: the same retrieval for
every condition), ``extract`` (rule scoring), ``judge`` (pairwise,
both orders), ``stats`` (intervals, flips), ``runner`` (resume, parallel items,
``evaluate``), ``report`` and ``plot``.
"""

from __future__ import annotations

from .questions import Question, QuestionSet, builtin_sets, load_questions
from .runner import evaluate
from .settings import EvalSettings

__all__ = ["EvalSettings", "Question", "QuestionSet", "builtin_sets", "evaluate", "load_questions"]
