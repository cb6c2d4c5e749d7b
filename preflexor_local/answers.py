"""The stated answer in a model's reply: the final choice, number or phrase, and when two count as the same.

Shared by eval (scoring against a key) and the engine (keyed rounds agree; the final answer is selected).

Models state answers in many ways ("Answer: (b)", "**C**", "\\boxed{42}",
"≈ 1.2 × 10^5 Pa", "the correct option is B. Calcite is wrong because…").
The rules, in order; the first that finds something wins:

choice
  1. ``\\boxed{X}``; 2. the last answer marker ("answer is", "Answer:",
  "correct option is", "I choose") that a single letter follows ("a"/"A"
  followed by a word counts only when bracketed, so the article in "the answer
  is a composite" is not read as option A);
  3. an answer that is only a letter, or starts with "B)" / "(B)" / "B.";
  4. exactly one option's text after the last marker, then in the whole answer;
  5. exactly one distinct letter written as "(X)" or "X)".
  More than one candidate at a step means no prediction (it counts as wrong).
numeric
  ``\\boxed{}``, then the first number after the last answer marker, then the
  last **bold** number, then the number after the last "=" or "≈", then the last
  number. Thousands separators, 1.2e5, 1.2 × 10^5, 10^{-3}, 10⁻³, unicode minus,
  simple fractions (1/4) and LaTeX ``\\times`` are understood; units are ignored.
  Digits inside words (H2O, Fe3O4) are not numbers.
exact
  The text after the last marker (else the first sentence) must contain one of
  the accepted strings as whole words, compared case-, accent- and
  punctuation-insensitively.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

_MARKER = re.compile(
    r"\b(?:(?:final|correct|right|best)\s+)?answer\b\s*(?:is|would\s+be|will\s+be|should\s+be)?\s*(?:[:=-]\s*)?"
    r"|\b(?:final|correct|right|best)\s+(?:option|choice)\b\s*(?:is|would\s+be)?\s*(?:[:=-]\s*)?"
    r"|\bI\s+(?:choose|select|pick|go\s+with)\b\s*:?\s*",
    re.I,
)
_BOXED = re.compile(r"\\boxed\s*\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\}")
_SUPERSCRIPT = str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺", "0123456789-+")
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-+])?(?P<mant>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:\s*/\s*(?P<den>\d+)(?![\d.,eE/]))?"  # a simple fraction (1/4), not 40000/2e-4 or a date
    r"(?:\s*[eE](?P<e>[-+]?\d+)"
    r"|\s*(?:×|x|\*|·)\s*10\s*(?:\^|\*\*)\s*\(?(?P<x>[-+]?\d+)\)?"
    r"|\s*(?:\^|\*\*)\s*\(?(?P<p>[-+]?\d+)\)?)?"
    r"(?!\d)"
)


_CITATION = re.compile(r"\[\d{1,3}(?:\s*[,;-]\s*\d{1,3})*\]")


def _clean(text: str) -> str:
    """Unify the notations that would otherwise need a rule each."""
    text = text.replace("−", "-").replace("–", "-").replace("\u2009", " ").replace("\u00a0", " ")
    text = _CITATION.sub(" ", text)  # a grounded answer cites passages "[1]", "[2, 3]": a citation is never the answer
    text = re.sub(r"\\(?:times|cdot)", "×", text)
    text = re.sub(r"\\[,;! ]", " ", text)  # LaTeX spacing
    text = re.sub(r"\^\s*\{\s*([-+]?\d+)\s*\}", r"^\1", text)  # 10^{-3} -> 10^-3
    text = re.sub(r"10([⁻⁺]?[⁰¹²³⁴⁵⁶⁷⁸⁹]+)", lambda m: "10^" + m.group(1).translate(_SUPERSCRIPT), text)
    return text.replace("$", "")


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower().replace("'", "").replace("’", "")
    return " ".join(re.sub(r"[^\w]+", " ", text).split())


def _after_markers(text: str) -> list[str]:
    """The text after each answer marker, up to the end of its line; last marker first."""
    spans = [m.end() for m in _MARKER.finditer(text) if m.group(0).strip()]
    return [text[end:].split("\n", 1)[0] for end in reversed(spans)]


# -- choice ---------------------------------------------------------------------


def _letter_at_start(segment: str, letters: str) -> str | None:
    """A single option letter at the start of ``segment`` ("B", "(b)", "**C**", "D) …"), else None."""
    m = re.match(r"^[\s*_]*([(\[]?)\s*([A-Za-z])(?![A-Za-z0-9'’-])", segment)
    if not m or m.group(2).upper() not in letters:
        return None
    letter, rest = m.group(2), segment[m.end() :]
    # "a"/"A" is also an article ("the answer is a composite"): refuse it when a word follows unless it is set off.
    if letter in "aA" and not m.group(1) and re.match(r"\s+[A-Za-z]", rest):
        return None
    return letter.upper()


def extract_choice(text: str, choices: tuple[str, ...]) -> str | None:
    """The option letter ``text`` states; without ``choices`` (options unknown) any letter A-Z may be one."""
    text = _clean(text)
    letters = LETTERS[: len(choices)] if choices else LETTERS
    for boxed in reversed(_BOXED.findall(text)):
        if (letter := _letter_at_start(boxed.strip(), letters)) is not None:
            return letter
    segments = _after_markers(text)
    for segment in segments:
        if (letter := _letter_at_start(segment, letters)) is not None:
            return letter
    lead = re.match(r"^[\s*_]*[(\[]?([A-Za-z])(?:[)\].:](?!\w)|[\s*_)\].]*$)", text)
    if lead and lead.group(1).upper() in letters:  # the answer is a bare letter, or starts with a label "B) …"
        return lead.group(1).upper()
    normed = [_norm(c) for c in choices]
    for scope in ([segments[0]] if segments else []) + [text]:
        hay = f" {_norm(scope)} "
        found = {letters[i] for i, c in enumerate(normed) if c and f" {c} " in hay}
        if len(found) == 1:
            return found.pop()
        if found:
            break  # several options named: ambiguous
    labelled = {m.group(1).upper() for m in re.finditer(r"(?:\(|\b)([A-Za-z])\)", text) if m.group(1).upper() in letters}
    return labelled.pop() if len(labelled) == 1 else None


# -- numbers --------------------------------------------------------------------


def _value(m: re.Match) -> float | None:
    try:
        v = float(m.group("mant").replace(",", ""))
        if m.group("den"):
            den = float(m.group("den"))
            if den == 0:
                return None
            v /= den
        if m.group("e"):
            v *= 10.0 ** int(m.group("e"))
        elif m.group("x"):
            v *= 10.0 ** int(m.group("x"))
        elif m.group("p"):
            v = v ** int(m.group("p"))
    except (ValueError, OverflowError, ZeroDivisionError):
        return None
    return -v if m.group("sign") == "-" else v


def _numbers(text: str) -> list[float]:
    return [v for m in _NUMBER.finditer(text) if (v := _value(m)) is not None]


def extract_number(text: str) -> float | None:
    text = _clean(text)
    for boxed in reversed(_BOXED.findall(text)):
        if nums := _numbers(boxed):
            return nums[0]
    for segment in _after_markers(text):
        if nums := _numbers(segment):
            return nums[0]
    for bold in reversed(re.findall(r"\*\*([^*]+)\*\*", text)):
        if nums := _numbers(bold):
            return nums[0]
    parts = re.split(r"=|≈|~", text)
    if len(parts) > 1 and (nums := _numbers(parts[-1])):
        return nums[0]
    nums = _numbers(text)
    return nums[-1] if nums else None


def numbers_match(a: float, b: float, tolerance: float) -> bool:
    """Whether ``a`` equals the key ``b`` within a relative tolerance (absolute when the key is 0)."""
    if b == 0:
        return abs(a) <= tolerance
    return abs(a - b) <= tolerance * abs(b) + 1e-12 * abs(b)


# -- exact ------------------------------------------------------------------------


def extract_phrase(text: str) -> str | None:
    segments = _after_markers(_clean(text))
    phrase = segments[0] if segments else re.split(r"(?<=[.!?])\s|\n", text.strip(), maxsplit=1)[0]
    phrase = phrase.strip().strip("*_ ").rstrip(".").strip()
    return phrase or None


def phrase_matches(phrase: str, accepted: tuple[str, ...]) -> bool:
    hay = f" {_norm(phrase)} "
    return any(f" {_norm(a)} " in hay for a in accepted if _norm(a))


KEYED_KINDS = ("choice", "numeric", "exact")


@dataclass(frozen=True)
class Key:
    """How a keyed answer is stated: its kind, the options of a choice, the relative tolerance of a number."""

    kind: str
    choices: tuple[str, ...] = ()
    tolerance: float = 0.01

    def __post_init__(self) -> None:
        if self.kind not in KEYED_KINDS:
            raise ValueError(f"not a keyed kind: {self.kind!r}")


def extract_key(kind: str, text: str, choices: tuple[str, ...] = ()) -> str | float | None:
    """The answer ``text`` states, for a keyed ``kind`` (choice: a letter; numeric: a number; exact: a phrase)."""
    if kind == "choice":
        return extract_choice(text, choices)
    if kind == "numeric":
        return extract_number(text)
    if kind == "exact":
        return extract_phrase(text)
    raise ValueError(f"not a keyed kind: {kind!r}")


def same_key(kind: str, a, b, tolerance: float = 0.01) -> bool:
    """Whether two stated answers count as the same (a vote, an agreement); nothing stated agrees with nothing."""
    if a is None or b is None:
        return False
    if kind == "numeric":
        return numbers_match(float(a), float(b), tolerance)
    if kind == "exact":
        return _norm(str(a)) == _norm(str(b))
    return a == b
