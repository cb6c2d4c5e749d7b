"""Rule scoring: whether the answer a model states (``preflexor_local.answers``) matches an item's key."""

from __future__ import annotations

from dataclasses import dataclass

from ..answers import extract_choice, extract_number, extract_phrase, numbers_match, phrase_matches, same_key
from .questions import Question

__all__ = ["Score", "extract_choice", "extract_number", "extract_phrase", "numbers_match", "phrase_matches", "score", "same_prediction"]


@dataclass(frozen=True)
class Score:
    prediction: str | float | None  # what was extracted (a letter, a number, a phrase); None when nothing was
    correct: bool | None  # None for open questions (judged, not scored by rule)


# -- scoring ----------------------------------------------------------------------


def score(question: Question, answer: str) -> Score:
    """Extract the prediction from ``answer`` and compare it with the key (open questions: not scored)."""
    if question.kind == "choice":
        letter = extract_choice(answer, question.choices or ())
        return Score(letter, letter == question.answer)
    if question.kind == "numeric":
        value = extract_number(answer)
        return Score(value, value is not None and numbers_match(value, float(question.answer), question.rel_tolerance))
    if question.kind == "exact":
        phrase = extract_phrase(answer)
        return Score(phrase, phrase is not None and phrase_matches(phrase, question.answer))
    return Score(None, None)


def same_prediction(question: Question, a, b) -> bool:
    """Whether two predictions count as the same vote (self-consistency)."""
    return same_key(question.kind, a, b, question.rel_tolerance)
