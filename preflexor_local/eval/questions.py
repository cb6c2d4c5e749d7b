"""Question sets: the JSONL format, validation with file:line errors, and the built-in sets.

One question per line, a JSON object:

* ``id`` (string or integer, unique in the file), ``question`` (non-empty string),
  ``kind``: ``choice`` | ``numeric`` | ``exact`` | ``open``;
* choice: ``choices`` (2–26 distinct strings, shown as A), B), …) and ``answer``
  (the letter, or the exact text of one choice);
* numeric: ``answer`` (a number) and optional ``tolerance``, relative to the key
  (0.02 = within 2 %; default 0.01; absolute when the key is 0);
* exact: ``answer`` (a string, or a list of accepted strings);
* open: no ``answer``; optional ``reference`` (shown to the judge);
* optional ``reference`` (any kind) and ``topic``;
* optional grounding (any kind): ``passages``, the ids of the corpus passages the
  answer stands in (a non-empty list of non-empty strings), and ``evidence``, the
  sentence of one of them that decides it (a non-empty string, copied verbatim).
  Neither is shown to the model: they document and test where the key comes from.

Unknown fields are errors, never silently dropped. Blank lines are skipped.
``builtin:NAME`` names a set shipped in ``preflexor_local/eval/sets/NAME.jsonl``;
``NAME-corpus.jsonl`` beside it is the passage corpus its items are grounded in
(``corpus.load_corpus``), not a question set.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from ..errors import PreflexorError, UsageError

KINDS = ("choice", "numeric", "exact", "open")
FIELDS = {"id", "question", "kind", "answer", "choices", "tolerance", "reference", "topic", "evidence", "passages"}
DEFAULT_TOLERANCE = 0.01
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
BUILTIN_PREFIX = "builtin:"
CORPUS_SUFFIX = "-corpus"  # sets/NAME-corpus.jsonl holds passages, not questions
_FORMAT_HINT = (
    'each line is a JSON object like {"id": "q1", "question": "…", "kind": "choice", "choices": ["…", "…"], "answer": "B"}; see the README, "Evaluating"'
)

# Not "Answer: X": in the plain completion format (base models) "Answer:" at a line start begins a new turn and
# is a stop string, so an answer in that form would be cut to nothing. The extractor reads both forms.
INSTRUCTIONS = {
    "choice": 'End your reply with "The answer is X.", where X is the letter of the correct option.',
    "numeric": 'End your reply with "The answer is N.", where N is a number in the unit asked for.',
    "exact": 'End your reply with "The answer is …" and a short phrase.',
}


class QuestionFileError(PreflexorError):
    """A question file is missing, malformed or empty."""

    exit_code = 2


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    kind: str
    answer: str | float | tuple[str, ...] | None = None  # choice: the letter; numeric: float; exact: accepted strings
    choices: tuple[str, ...] | None = None
    tolerance: float | None = None
    reference: str | None = None
    topic: str | None = None
    evidence: str | None = None  # the corpus sentence that decides the answer
    passages: tuple[str, ...] | None = None  # ids of the corpus passages that ground it

    @property
    def keyed(self) -> bool:
        return self.kind != "open"

    @property
    def rel_tolerance(self) -> float:
        return DEFAULT_TOLERANCE if self.tolerance is None else self.tolerance

    def prompt(self) -> str:
        """The text the model is asked: the question, the lettered options, and how to state the answer."""
        parts = [self.question.strip()]
        if self.choices:
            parts.append("\n".join(f"{LETTERS[i]}) {c}" for i, c in enumerate(self.choices)))
        if self.kind in INSTRUCTIONS:
            parts.append(INSTRUCTIONS[self.kind])
        return "\n\n".join(parts)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v is not None}
        for key in ("choices", "answer", "passages"):
            if isinstance(d.get(key), tuple):
                d[key] = list(d[key])
        return d


@dataclass(frozen=True)
class QuestionSet:
    source: str  # as given: a path or builtin:NAME
    path: str
    sha256: str
    questions: tuple[Question, ...]

    def describe(self) -> dict:
        kinds = {k: sum(q.kind == k for q in self.questions) for k in KINDS}
        return {"source": self.source, "path": self.path, "sha256": self.sha256, "count": len(self.questions), "kinds": kinds}


def builtin_sets() -> list[str]:
    names = (p.name[:-6] for p in resources.files(__package__).joinpath("sets").iterdir() if p.name.endswith(".jsonl"))
    return sorted(n for n in names if not n.endswith(CORPUS_SUFFIX))


def resolve_source(source: str) -> Path:
    if source.startswith(BUILTIN_PREFIX):
        name = source[len(BUILTIN_PREFIX) :]
        if name not in builtin_sets():
            raise UsageError(f"no built-in question set named {name!r}", hint=f"built-in sets: {', '.join('builtin:' + s for s in builtin_sets())}")
        return Path(str(resources.files(__package__).joinpath("sets", f"{name}.jsonl")))
    path = Path(source).expanduser()
    if not path.is_file():
        raise UsageError(
            f"question file not found: {source}", hint=f"give a JSONL file, or a built-in set: {', '.join('builtin:' + s for s in builtin_sets())}"
        )
    return path


def load_questions(source: str) -> QuestionSet:
    """Read and validate a question set; every bad line is refused with file:line."""
    path = resolve_source(source)
    try:
        data = path.read_bytes()
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise QuestionFileError(f"{path}: not UTF-8 text", hint=_FORMAT_HINT) from None
    except OSError as err:
        raise QuestionFileError(f"cannot read {path}: {err.strerror or err}") from None
    questions: list[Question] = []
    errors: list[tuple[int, str]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = parse_question(line)
        except ValueError as err:
            errors.append((lineno, str(err)))
            continue
        if q.id in seen:
            errors.append((lineno, f"duplicate id {q.id!r} (first on line {seen[q.id]})"))
            continue
        seen[q.id] = lineno
        questions.append(q)
    if errors:
        (lineno, msg), rest = errors[0], [str(n) for n, _ in errors[1:]]
        more = f" (and {len(rest)} more bad line{'s' if len(rest) > 1 else ''}: {', '.join(rest[:5])}{' …' if len(rest) > 5 else ''})" if rest else ""
        raise QuestionFileError(f"{path}:{lineno}: {msg}{more}", hint=_FORMAT_HINT)
    if not questions:
        raise QuestionFileError(f"{path}: no questions", hint=_FORMAT_HINT)
    return QuestionSet(source=source, path=str(path), sha256=hashlib.sha256(data).hexdigest(), questions=tuple(questions))


def json_object(line: str, fields) -> dict:
    """One JSONL line as an object of known ``fields`` only; ``ValueError`` says what is wrong (without the location)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err.msg}, column {err.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(fields))
    if unknown:
        raise ValueError(f"unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} (allowed: {', '.join(sorted(fields))})")
    return row


def parse_question(line: str) -> Question:
    """One line to a ``Question``; ``ValueError`` says what is wrong (without the location)."""
    row = json_object(line, FIELDS)
    qid = row.get("id")
    if isinstance(qid, bool) or not isinstance(qid, str | int) or not str(qid).strip():
        raise ValueError("'id' must be a non-empty string or an integer")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("'question' must be a non-empty string")
    kind = row.get("kind")
    if kind not in KINDS:
        raise ValueError(f"'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    for key in ("reference", "topic"):
        if key in row and not isinstance(row[key], str):
            raise ValueError(f"'{key}' must be a string")
    if "evidence" in row and (not isinstance(row["evidence"], str) or not row["evidence"].strip()):
        raise ValueError("'evidence' must be a non-empty string (the sentence that decides the answer)")
    passages = row.get("passages")
    if passages is not None:
        if not isinstance(passages, list) or not passages or not all(isinstance(p, str) and p.strip() for p in passages):
            raise ValueError("'passages' must be a non-empty list of passage ids (non-empty strings)")
        passages = tuple(p.strip() for p in passages)
    if "choices" in row and kind != "choice":
        raise ValueError(f"'choices' only belongs to choice questions, not {kind}")
    if "tolerance" in row and kind != "numeric":
        raise ValueError(f"'tolerance' only belongs to numeric questions, not {kind}")
    answer, choices, tolerance = row.get("answer"), None, None
    if kind == "choice":
        choices = row.get("choices")
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS) or not all(isinstance(c, str) and c.strip() for c in choices):
            raise ValueError("'choices' must be a list of 2 to 26 non-empty strings")
        if len({c.strip().lower() for c in choices}) != len(choices):
            raise ValueError("'choices' must differ from one another")
        choices = tuple(c.strip() for c in choices)
        letters = LETTERS[: len(choices)]
        if isinstance(answer, str) and answer.strip().upper() in letters and len(answer.strip()) == 1:
            answer = answer.strip().upper()
        elif isinstance(answer, str) and answer.strip() in choices:
            answer = letters[choices.index(answer.strip())]
        else:
            raise ValueError(f"'answer' must be a letter {letters[0]}–{letters[-1]} or the text of one choice, got {answer!r}")
    elif kind == "numeric":
        if isinstance(answer, bool) or not isinstance(answer, int | float) or not math.isfinite(answer):
            raise ValueError(f"'answer' must be a finite number, got {answer!r}")
        answer = float(answer)
        tolerance = row.get("tolerance")
        if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, int | float) or not 0 <= tolerance < 1):
            raise ValueError(f"'tolerance' must be a relative tolerance from 0 up to 1 (0.02 = 2 %), got {tolerance!r}")
        tolerance = None if tolerance is None else float(tolerance)
    elif kind == "exact":
        accepted = [answer] if isinstance(answer, str) else answer
        if not isinstance(accepted, list) or not accepted or not all(isinstance(a, str) and a.strip() for a in accepted):
            raise ValueError("'answer' must be a non-empty string or a list of them")
        answer = tuple(a.strip() for a in accepted)
    elif answer is not None:
        raise ValueError("open questions have no 'answer'; put a model answer in 'reference' (the judge sees it)")
    return Question(
        id=str(qid).strip(),
        question=question.strip(),
        kind=kind,
        answer=answer,
        choices=choices,
        tolerance=tolerance,
        reference=row.get("reference"),
        topic=row.get("topic"),
        evidence=row["evidence"].strip() if "evidence" in row else None,
        passages=passages,
    )
