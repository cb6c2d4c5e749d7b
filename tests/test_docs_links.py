"""The README and docs/ cannot rot silently: every relative link resolves to a file, and every anchor to a heading.

Links are read the way GitHub renders them: outside fenced code and code spans, ``[text](target)``,
``![alt](target)`` and ``[label]: target`` definitions. Anchors follow GitHub's heading slugs (lower case,
punctuation other than ``-`` and ``_`` dropped, each space a ``-``, repeats numbered ``-1``, ``-2``…).
Links with a scheme (``https:``, ``mailto:``) are not checked: the tests run offline.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 200  # the README is the front page; the rest lives in docs/

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_HTML_ANCHOR = re.compile(r"<a\s[^>]*(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code, with code spans blanked so their text is never read as a link."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if m:
            fence = None if fence and m.group(1) == fence else (fence or m.group(1))
            continue
        if fence is None:
            out.append((number, _CODE_SPAN.sub(lambda c: c.group(1) + "x" * len(c.group(2)) + c.group(1), line)))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's source text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors by its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a markdown file offers: heading slugs (repeats numbered) and explicit HTML anchors."""
    text = path.read_text(encoding="utf-8")
    seen: Counter[str] = Counter()
    found = set()
    fence = None
    for line in text.splitlines():
        m = _FENCE.match(line)
        if m:
            fence = None if fence and m.group(1) == fence else (fence or m.group(1))
            continue
        if fence:
            continue
        found.update(_HTML_ANCHOR.findall(line))
        h = _HEADING.match(line)
        if h:
            base = slug(h.group(2))
            found.add(base if not seen[base] else f"{base}-{seen[base]}")
            seen[base] += 1
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of every link in a markdown file's prose."""
    out = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        out += [(number, t) for t in _INLINE.findall(line)]
        d = _DEFINITION.match(line)
        if d:
            out.append((number, d.group(1)))
    return out


def broken_links(path: Path, root: Path) -> list[str]:
    """One line per link in ``path`` that does not resolve inside ``root``."""
    problems = []
    for number, target in links(path):
        if not target or _SCHEME.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not dest.is_relative_to(root) or not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.is_file() and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with that anchor in {dest.relative_to(root)}")
        elif anchor and not (dest.is_file() and dest.suffix == ".md"):
            problems.append(f"{where}: an anchor into something that is not a markdown file")
    return problems


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    assert broken_links(path, ROOT) == []


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_slugs_follow_github():
    assert slug("The two commands") == "the-two-commands"
    assert slug("Why `--end-weight`") == "why---end-weight"
    assert slug("LoRA → GGUF") == "lora--gguf"
    assert slug("Repeats (DRY)") == "repeats-dry"
    assert slug("[Linked](x.md) heading_name") == "linked-heading_name"


def test_the_checker_finds_what_is_broken(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# A\n\n## Same\n\n## Same\n\n### Why `--x`\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "\n".join(
            [
                "# Front",
                "[ok](docs/a.md) [ok](docs/a.md#same-1) [ok](docs/a.md#why---x) [ok](#front) [ok](docs) [web](https://example.org/x)",
                "[gone](docs/missing.md) ![gone](docs/missing.png)",
                "[bad anchor](docs/a.md#same-2) [bad local](#nowhere) [anchor into a folder](docs#a)",
                "[escapes](../outside.md)",
                "`[in a code span](docs/missing.md)`",
                "```",
                "[in a fence](docs/missing.md)",
                "```",
                "[label]: docs/also-missing.md",
            ]
        ),
        encoding="utf-8",
    )
    problems = broken_links(tmp_path / "README.md", tmp_path)
    targets = [p.split(": ")[1] for p in problems]
    assert targets == [
        "docs/missing.md",
        "docs/missing.png",
        "docs/a.md#same-2",
        "#nowhere",
        "docs#a",
        "../outside.md",
        "docs/also-missing.md",
    ]
