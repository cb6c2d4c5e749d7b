"""Text extraction with provenance: PDF pages, or source lines for text formats.

``extract(path, data)`` returns an :class:`Extracted` (the text and where each
part came from) or raises :class:`SkipFile` with a one-line reason. It never
raises anything else for a bad file: binary, empty, encrypted or broken PDFs and
undecodable text are all reasons to skip, not to stop.
"""

from __future__ import annotations

import io
import logging
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

KINDS = {
    ".pdf": "pdf",
    ".md": "markdown",
    ".markdown": "markdown",
    ".txt": "text",
    ".text": "text",
    ".rst": "rst",
    ".tex": "latex",
    ".org": "org",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
}


class SkipFile(Exception):
    """This file cannot be indexed; ``str(err)`` says why in a few words."""


@dataclass
class Extracted:
    text: str
    kind: str
    unit: str  # "page" or "line"
    marks: list[int]  # character offsets where a unit starts (sorted)
    numbers: list[int] | None = field(default=None)  # the unit number at each mark (default 1, 2, 3, ...)

    def unit_at(self, offset: int) -> int:
        i = max(bisect_right(self.marks, offset) - 1, 0)
        return self.numbers[i] if self.numbers is not None else i + 1

    def span(self, start: int, end: int) -> str:
        first, last = self.unit_at(start), self.unit_at(max(end - 1, start))
        if self.unit == "page":
            return f"p.{first}" if first == last else f"pp.{first}-{last}"
        return f"line {first}" if first == last else f"lines {first}-{last}"


def kind_of(path: Path) -> str | None:
    return KINDS.get(path.suffix.lower())


def extract(path: Path, data: bytes, kind: str | None = None) -> Extracted:
    kind = kind or kind_of(path) or "text"
    if not data.strip():
        raise SkipFile("empty file")
    if kind == "pdf":
        return _pdf(data)
    text = _decode(data)
    if kind == "html":
        return _html(text)
    return _lines(text, kind)


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            text = data.decode("utf-16")
        except UnicodeDecodeError:
            raise SkipFile("undecodable UTF-16 text") from None
    else:
        if b"\x00" in data[:8192]:
            raise SkipFile("binary file (NUL bytes), not text")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise SkipFile(f"not UTF-8 text (invalid byte at offset {err.start}); convert it with iconv") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise SkipFile("no text (whitespace only)")
    return text


def _lines(text: str, kind: str) -> Extracted:
    marks = [0] + [m.end() for m in re.finditer("\n", text)]
    return Extracted(text, kind, "line", marks)


def _pdf(data: bytes) -> Extracted:
    try:
        import pypdf
    except ImportError:
        raise SkipFile("PDF support needs pypdf: pip install 'pypdf==7.1.0'") from None
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")  # many PDFs are "encrypted" with an empty user password
            except Exception:
                ok = 0
            if not ok:
                raise SkipFile("encrypted PDF (needs a password); decrypt it first, e.g. qpdf --decrypt")
        pages = list(reader.pages)
    except SkipFile:
        raise
    except Exception as err:
        raise SkipFile(f"unreadable PDF ({type(err).__name__}: {err})".replace("\n", " ")[:200]) from None
    parts, marks, pos = [], [], 0
    for page in pages:
        try:
            text = page.extract_text() or ""
        except Exception:
            text = ""
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
        marks.append(pos)
        parts.append(text)
        pos += len(text) + 2
    full = "\n\n".join(parts)
    if not full.strip():
        raise SkipFile(f"PDF with no extractable text ({len(pages)} pages; scanned images need OCR first)")
    return Extracted(full, "pdf", "page", marks)


_BLOCK = {
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "tr",
    "td",
    "th",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "pre",
    "blockquote",
    "dd",
    "dt",
    "figcaption",
    "hr",
    "title",
}
_HIDDEN = {"script", "style", "noscript", "template", "svg", "head"}


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.marks: list[int] = []
        self.numbers: list[int] = []
        self.pos = 0
        self.hidden = 0
        self.in_title = False

    def _add(self, text: str, line: int) -> None:
        self.marks.append(self.pos)
        self.numbers.append(line)
        for i, ch in enumerate(text):
            if ch == "\n":
                line += 1
                self.marks.append(self.pos + i + 1)
                self.numbers.append(line)
        self.parts.append(text)
        self.pos += len(text)

    def handle_starttag(self, tag, attrs):
        if tag in _HIDDEN and tag != "head":
            self.hidden += 1
        if tag == "title":
            self.in_title = True
        if tag in _BLOCK:
            self._add("\n", self.getpos()[0])

    def handle_endtag(self, tag):
        if tag in _HIDDEN and tag != "head" and self.hidden:
            self.hidden -= 1
        if tag == "title":
            self.in_title = False
        if tag in _BLOCK:
            self._add("\n", self.getpos()[0])

    def handle_data(self, data):
        if not self.hidden:
            self._add(data, self.getpos()[0])


def _html(source: str) -> Extracted:
    parser = _HTMLText()
    try:
        parser.feed(source)
        parser.close()
    except Exception as err:
        raise SkipFile(f"unparseable HTML ({err})") from None
    text = "".join(parser.parts)
    if not text.strip():
        raise SkipFile("HTML with no visible text")
    return Extracted(text, "html", "line", parser.marks, parser.numbers)
