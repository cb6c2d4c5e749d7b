"""The passage corpora shipped beside the built-in question sets.

``sets/NAME-corpus.jsonl`` holds the passages that the items of ``builtin:NAME``
are grounded in, one JSON object per line: ``id`` (unique non-empty string),
``source`` (a short title) and ``text`` (one self-contained passage). Items name
their passages by id (``Question.passages``). Unknown fields are errors; blank
lines are skipped. A bad line is refused with file:line, like a question file.
"""

from __future__ import annotations

from importlib import resources

from ..errors import PreflexorError, UsageError
from .questions import CORPUS_SUFFIX, json_object

FIELDS = ("id", "source", "text")
_FORMAT_HINT = 'each line is a JSON object like {"id": "g-p001", "source": "Sea urchin spines", "text": "…"}'


class CorpusFileError(PreflexorError):
    """A shipped passage corpus is malformed (a packaging bug, not a user error)."""

    exit_code = 2


def builtin_corpora() -> list[str]:
    names = (p.name[:-6] for p in resources.files(__package__).joinpath("sets").iterdir() if p.name.endswith(".jsonl"))
    return sorted(n[: -len(CORPUS_SUFFIX)] for n in names if n.endswith(CORPUS_SUFFIX))


def load_corpus(name: str = "grounded") -> list[dict]:
    """The passages of the shipped corpus ``NAME``, in file order, as ``{"id", "source", "text"}`` dicts."""
    if name not in builtin_corpora():
        raise UsageError(f"no built-in corpus named {name!r}", hint=f"built-in corpora: {', '.join(builtin_corpora()) or 'none'}")
    path = resources.files(__package__).joinpath("sets", f"{name}{CORPUS_SUFFIX}.jsonl")
    passages: list[dict] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = _parse_passage(line)
        except ValueError as err:
            raise CorpusFileError(f"{path}:{lineno}: {err}", hint=_FORMAT_HINT) from None
        if row["id"] in seen:
            raise CorpusFileError(f"{path}:{lineno}: duplicate id {row['id']!r} (first on line {seen[row['id']]})", hint=_FORMAT_HINT)
        seen[row["id"]] = lineno
        passages.append(row)
    if not passages:
        raise CorpusFileError(f"{path}: no passages", hint=_FORMAT_HINT)
    return passages


def _parse_passage(line: str) -> dict:
    row = json_object(line, FIELDS)
    for key in FIELDS:
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"'{key}' must be a non-empty string")
    return {key: row[key].strip() for key in FIELDS}
