"""The thinking format: the tag pairs, and how text splits into thinking / reflection / answer.

This is the one place that knows the tags. Everything else (engine, trainers,
converters, the CLI's stream display) asks a ``ThinkingFormat`` for them.

Parsing rules (they never raise; every input has exactly one reading):

* A section runs from its opening tag to its closing tag.
* A closing tag with no opening tag before it (the usual case when the opening
  tag was pre-filled into the prompt) closes a section that started right after
  the previous closing tag, or at the start of the text.
* An opening tag of the section that is already open is ignored; an opening tag
  of the *other* section ends the open one as unclosed.
* A closing tag of a section that is not open ends the open section as unclosed.
* The answer is the text outside sections after the **last** closing tag; when
  there is no closing tag at all it is the text outside sections (so an
  unclosed, truncated thinking section gives an empty answer, not a crash).

``StreamParser`` applies the same rules to a stream whose chunks may split a tag
anywhere; ``parse(text)`` is ``StreamParser`` fed with one chunk, so the two
cannot disagree.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field

from .errors import UsageError

THINKING = "thinking"
REFLECTION = "reflection"
OUTSIDE = "outside"


@dataclass(frozen=True)
class ThinkingFormat:
    """The tag pairs. Defaults are PRefLexOR's; ``ThinkingFormat.preset("think")`` suits ``<think>`` models."""

    think_start: str = "<|thinking|>"
    think_end: str = "<|/thinking|>"
    reflect_start: str = "<|reflect|>"
    reflect_end: str = "<|/reflect|>"
    # Appended to the question. The published PRefLexOR checkpoints were trained
    # with this cue after every question, so it stays the default.
    cue: str = " Use {think_start}."

    def __post_init__(self) -> None:
        tags = self.tags
        if any(not t or t != t.strip() for t in tags):
            raise UsageError(f"invalid thinking tags {tags!r}: tags must be non-empty and have no surrounding spaces")
        if len(set(tags)) != 4:
            raise UsageError(f"invalid thinking tags {tags!r}: the four tags must differ")
        for a in tags:
            for b in tags:
                if a != b and a in b:
                    raise UsageError(f"invalid thinking tags: {a!r} occurs inside {b!r}", hint="choose tags that do not contain each other")

    PRESETS = {
        "preflexor": ("<|thinking|>", "<|/thinking|>", "<|reflect|>", "<|/reflect|>"),
        "think": ("<think>", "</think>", "<reflect>", "</reflect>"),
    }

    @classmethod
    def preset(cls, name: str) -> ThinkingFormat:
        try:
            ts, te, rs, re_ = cls.PRESETS[name]
        except KeyError:
            raise UsageError(f"unknown tag preset {name!r}", hint=f"choose one of: {', '.join(cls.PRESETS)}") from None
        return cls(ts, te, rs, re_)

    @property
    def tags(self) -> tuple[str, str, str, str]:
        return (self.think_start, self.think_end, self.reflect_start, self.reflect_end)

    @property
    def opening_tags(self) -> tuple[str, str]:
        """The tags that open a section: an answer may never write one."""
        return (self.think_start, self.reflect_start)

    @property
    def answer_stops(self) -> tuple[str, ...]:
        """Where an answer ends: at the tags' shared opening (``<|`` for PRefLexOR's), else at an opening tag.

        The tags are plain text spread over several tokens, so a small model writes half-formed ones in its
        answers (``<|/thnkmkj|]``, ``<|///ROUTINES|>``) and goes on with markup; only the shared opening catches
        those. It must be two characters at least: ``<think>``-style tags share only ``<``, which prose uses.
        """
        shared = os.path.commonprefix(self.tags)
        return (shared,) if len(shared) >= 2 else self.opening_tags

    def question_with_cue(self, question: str) -> str:
        return question.rstrip() + self.cue.format(think_start=self.think_start) if self.cue else question

    def thinking_block(self, thinking: str) -> str:
        """A complete thinking section, as pre-filled before the model answers."""
        return f"{self.think_start}\n{thinking.strip()}\n{self.think_end}\n"

    def strip_tags(self, text: str) -> str:
        """Text with every tag removed: for model output that must go back into a prompt as prose."""
        for tag in self.tags:
            text = text.replace(tag, "")
        return text

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Block:
    kind: str  # THINKING or REFLECTION
    text: str
    closed: bool


@dataclass
class Parsed:
    """Typed sections of one model output."""

    blocks: list[Block] = field(default_factory=list)
    answer: str = ""

    def _joined(self, kind: str) -> str | None:
        parts = [b.text.strip() for b in self.blocks if b.kind == kind]
        return "\n\n".join(p for p in parts if p) if parts else None

    def _closed(self, kind: str) -> bool:
        last = [b for b in self.blocks if b.kind == kind]
        return bool(last) and last[-1].closed

    @property
    def thinking(self) -> str | None:
        return self._joined(THINKING)

    @property
    def thinking_closed(self) -> bool:
        return self._closed(THINKING)

    @property
    def reflection(self) -> str | None:
        return self._joined(REFLECTION)

    @property
    def reflection_closed(self) -> bool:
        return self._closed(REFLECTION)


@dataclass(frozen=True)
class Piece:
    """A run of streamed text and the channel it belongs to (as far as the stream has shown)."""

    channel: str  # OUTSIDE, THINKING or REFLECTION
    text: str


class StreamParser:
    """Incremental parser: ``feed(chunk) -> [Piece]``, then ``finish() -> Parsed``.

    Text that might be the start of a tag is held back until the next chunk
    decides it, so pieces never contain a partial tag. A closing tag with no
    opening tag re-labels the text before it in the final result; pieces
    already emitted for that text said ``outside`` (a stream cannot know yet).
    """

    def __init__(self, fmt: ThinkingFormat | None = None):
        self.fmt = fmt or ThinkingFormat()
        f = self.fmt
        self._kind_of = {
            f.think_start: (THINKING, True),
            f.think_end: (THINKING, False),
            f.reflect_start: (REFLECTION, True),
            f.reflect_end: (REFLECTION, False),
        }
        self._tag_re = re.compile("|".join(re.escape(t) for t in sorted(f.tags, key=len, reverse=True)))
        self._buf = ""
        self._state = OUTSIDE
        self._blocks: list[Block] = []
        self._outside_since_close = ""  # outside text after the last closing tag
        self._seen_close = False
        self._all_outside = ""  # outside text when no closing tag has been seen

    @property
    def channel(self) -> str:
        return self._state

    def feed(self, chunk: str) -> list[Piece]:
        self._buf += chunk
        pieces: list[Piece] = []
        while True:
            m = self._tag_re.search(self._buf)
            if m is None:
                break
            self._text(self._buf[: m.start()], pieces)
            self._buf = self._buf[m.end() :]
            self._tag(m.group(0))
        hold = self._partial_tag_len(self._buf)
        self._text(self._buf[: len(self._buf) - hold], pieces)
        self._buf = self._buf[len(self._buf) - hold :]
        return pieces

    def finish(self) -> Parsed:
        self._text(self._buf, [])
        self._buf = ""
        answer = self._outside_since_close if self._seen_close else self._all_outside
        return Parsed(blocks=[Block(b.kind, b.text.strip(), b.closed) for b in self._blocks], answer=answer.strip())

    # -- internals -------------------------------------------------------
    def _partial_tag_len(self, buf: str) -> int:
        """Length of the longest suffix of ``buf`` that is a proper prefix of a tag."""
        best = 0
        for tag in self.fmt.tags:
            for n in range(min(len(tag) - 1, len(buf)), best, -1):
                if buf.endswith(tag[:n]):
                    best = n
                    break
        return best

    def _text(self, text: str, pieces: list[Piece]) -> None:
        if not text:
            return
        if self._state == OUTSIDE:
            self._outside_since_close += text
            if not self._seen_close:
                self._all_outside += text
        else:
            self._blocks[-1].text += text
        if pieces and pieces[-1].channel == self._state:
            pieces[-1] = Piece(self._state, pieces[-1].text + text)
        else:
            pieces.append(Piece(self._state, text))

    def _close(self) -> None:
        self._state = OUTSIDE
        self._seen_close = True
        self._outside_since_close = ""

    def _tag(self, tag: str) -> None:
        kind, is_start = self._kind_of[tag]
        if self._state == OUTSIDE:
            if is_start:
                self._blocks.append(Block(kind, "", False))
                self._state = kind
            else:  # orphan closing tag: the section began after the previous close (pre-filled start)
                self._blocks.append(Block(kind, self._outside_since_close, True))
                if not self._seen_close:
                    self._all_outside = ""
                self._close()
        elif self._state == kind:
            if not is_start:
                self._blocks[-1].closed = True
                self._close()
            # a repeated opening tag of the open section is ignored
        elif is_start:  # the other section starts: the open one ends unclosed
            self._blocks.append(Block(kind, "", False))
            self._state = kind
        else:  # closing tag of a section that is not open: the open one ends unclosed
            self._close()


def parse(text: str, fmt: ThinkingFormat | None = None) -> Parsed:
    """Split one complete output into thinking, reflection and answer."""
    p = StreamParser(fmt)
    p.feed(text)
    return p.finish()


# A section heading of the method's thinking layout: a line that opens with a bold name and a colon ("**Hypothesis**:").
_HEADING = re.compile(r"^[ \t]*(\*\*[^*\n]{1,80}\*\*:)", re.MULTILINE)


def section_headings(thinking: str) -> tuple[str, ...]:
    """The section headings of a thinking text, in order, each once."""
    return tuple(dict.fromkeys(m.group(1) for m in _HEADING.finditer(thinking)))


def heading_stops(*thinkings: str) -> tuple[str, ...]:
    """Stops for a reply that answers, reviews or merges thinking: its section headings. A reply that writes one is
    thinking again (an answer restarting the layout, a review rewriting a section), so it ends there."""
    return section_headings("\n".join(thinkings))


@dataclass(frozen=True)
class RewriteFrame:
    """How the engine frames a critic's rewrite of a thinking text (``rewrite_frame``)."""

    opening: str  # pre-filled as the start of the rewrite: the thinking's first heading, if it opens with one
    stops_after: tuple[tuple[str, str], ...]  # (after, stop) pairs for ``GenerationRequest.stops_after``


def rewrite_frame(thinking: str) -> RewriteFrame:
    """Open a rewrite of ``thinking`` with its first heading, and end it where it has finished.

    A rewrite keeps the thinking's headings, each once, in order. Opening it with the first heading holds a small
    model to that layout (left alone it may answer in the review's own voice, "1. Step 2 is wrong: ..."). One that
    writes a heading a second time is starting its layout over; one that goes on after its last section is going
    past its end: after a last section of one line (heading and text), at the end of that line; otherwise at the
    next line that opens in bold. The pre-filled heading has been written once already, so its stop is armed from
    the start (an empty ``after``).
    """
    heads = section_headings(thinking)
    if not heads:
        return RewriteFrame("", ())
    opening = heads[0] if thinking.lstrip().startswith(heads[0]) else ""
    gate = {h: ("" if h == opening else h) for h in heads}
    last = thinking[thinking.rindex(heads[-1]) :].strip()
    one_line = "\n" not in last and last != heads[-1]
    end = (gate[heads[-1]], "\n" if one_line else "\n**")
    return RewriteFrame(opening, (*((gate[h], h) for h in heads), end))


# The critic's structured verdict: the last line of a review that reads "Verdict: fix." or "Verdict: nothing to fix.".
_VERDICT = re.compile(r"^[ \t>*_-]*verdict[ \t*_]*:[ \t*_]*(nothing to fix|fix)\b", re.IGNORECASE | re.MULTILINE)
_CITATION = re.compile(r"\[(\d{1,3})\]")


def critic_verdict(review: str) -> str | None:
    """ "fix" or "nothing to fix", from the review's last verdict line; None when it wrote none (read as: fix)."""
    found = _VERDICT.findall(review)
    return found[-1].lower() if found else None


def cited_passages(text: str, n: int) -> list[int]:
    """The passage numbers ``[k]`` that ``text`` cites, 1..n, sorted, each once."""
    return sorted({int(k) for k in _CITATION.findall(text) if 1 <= int(k) <= n})
