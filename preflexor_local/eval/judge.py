"""The pairwise judge: two answers, both orders, and a tie when the orders disagree.

A judge shown answers in one order prefers a position as much as an answer
(MT-Bench; Shi et al. 2024), so every comparison is asked twice, with the
answers swapped. The winner is the answer both orders chose; anything else
(the orders disagree, either says tie, either verdict cannot be read) is a tie.
Both raw verdict texts are kept. Any model spec can judge; a reference answer,
when the question has one, is shown to the judge as a guide.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ..backends.base import Backend, GenerationRequest
from ..config import Sampling
from ..format import ThinkingFormat, parse

JUDGE_SYSTEM = "You are a strict, impartial judge of answers to science questions."

JUDGE_PROMPT = """Compare two answers to the same question.

Question:
{question}
{reference}
Answer A:
{a}

Answer B:
{b}

Which answer is more correct and more useful? Judge accuracy first, then completeness and clarity; length is not a merit and the order of the answers does not matter. Reply with one letter: A if answer A is better, B if answer B is better, T if they are equally good."""

REFERENCE = "\nA reference answer (a guide, not the only acceptable answer):\n{reference}\n"
PREFILL = "Verdict:"

# One worked comparison, shown to base models (plain completion format) that were never taught to follow instructions.
_EXAMPLE = (
    "Why does ice float on water?",
    "Ice is less dense than liquid water because hydrogen bonds hold its molecules in an open lattice.",
    "Ice floats because it is cold.",
)


@dataclass
class Verdict:
    order: str  # "first-second": the first answer was shown as A; "second-first": swapped
    raw: str  # the judge's text, as generated
    verdict: str  # "A", "B", "T", or "?" when unreadable
    winner: str  # in the caller's terms: "first", "second", "tie", or "invalid"
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class Comparison:
    winner: str  # "first", "second" or "tie"
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def completion_tokens(self) -> int:
        return sum(v.completion_tokens for v in self.verdicts)

    @property
    def seconds(self) -> float:
        return sum(v.seconds for v in self.verdicts)

    @property
    def consistent(self) -> bool:
        return len({v.winner for v in self.verdicts}) == 1 and self.verdicts[0].winner in ("first", "second", "tie")

    def to_dict(self) -> dict:
        return {
            "winner": self.winner,
            "consistent": self.consistent,
            "verdicts": [asdict(v) for v in self.verdicts],
            "completion_tokens": self.completion_tokens,
            "seconds": round(self.seconds, 4),
        }


def read_verdict(text: str, fmt: ThinkingFormat | None = None) -> str:
    """ "A", "B" or "T" from a judge's reply (thinking, if any, removed), or "?"."""
    fmt = fmt or ThinkingFormat()
    if fmt.think_end in text or fmt.reflect_end in text:
        text = parse(text, fmt).answer
    text = text.strip().lstrip("*_:( ").strip()
    # Capitals only: a lower-case "a" is the article in "a tie", "a better answer".
    m = re.match(r"^(?:[Aa]nswer\s+)?([ABT])(?![A-Za-z])", text)
    if m:
        return m.group(1)
    low = text.lower()
    if re.match(r"^(?:tie|equal|both|neither|they are equal)", low):
        return "T"
    m = re.search(r"\banswer\s+([AB])\b\s+is\s+better|\b([AB])\s+is\s+better", text)
    if m:
        return (m.group(1) or m.group(2)).upper()
    return "?"


class PairwiseJudge:
    def __init__(self, backend: Backend, max_tokens: int = 48, seed: int = 0, fmt: ThinkingFormat | None = None):
        self.backend = backend
        # Greedy and seeded: the same pair gets the same verdict on every run.
        self.sampling = Sampling(temperature=0.0, top_p=1.0, top_k=0, repeat_penalty=1.0, dry_multiplier=0.0, max_tokens=max_tokens, seed=seed)
        self.fmt = fmt or ThinkingFormat()

    def describe(self) -> dict:
        return {**self.backend.describe(), "sampling": asdict(self.sampling)}

    def _messages(self, question: str, a: str, b: str, reference: str | None) -> list[dict]:
        def prompt(q, x, y, ref):
            ref_block = REFERENCE.replace("{reference}", ref.strip()) if ref else ""
            return (
                JUDGE_PROMPT.replace("{question}", q.strip())
                .replace("{reference}", ref_block)
                .replace("{a}", x.strip() or "(empty)")
                .replace("{b}", y.strip() or "(empty)")
            )

        msgs = [{"role": "system", "content": JUDGE_SYSTEM}]
        template = getattr(self.backend, "template", None)
        if template is not None and template.name == "plain":
            q, good, bad = _EXAMPLE
            msgs += [{"role": "user", "content": prompt(q, bad, good, None)}, {"role": "assistant", "content": f"{PREFILL} B"}]
        msgs.append({"role": "user", "content": prompt(question, a, b, reference)})
        return msgs

    def _ask(self, question: str, a: str, b: str, reference: str | None, order: str) -> Verdict:
        gen = self.backend.generate(GenerationRequest(messages=self._messages(question, a, b, reference), prefill=PREFILL, sampling=self.sampling))
        letter = read_verdict(gen.text, self.fmt)
        if order == "first-second":
            winner = {"A": "first", "B": "second", "T": "tie"}.get(letter, "invalid")
        else:
            winner = {"A": "second", "B": "first", "T": "tie"}.get(letter, "invalid")
        return Verdict(order, gen.text, letter, winner, gen.completion_tokens, gen.seconds)

    def compare(self, question: str, first: str, second: str, reference: str | None = None) -> Comparison:
        """Judge ``first`` against ``second`` in both orders; a winner only when both orders agree."""
        v1 = self._ask(question, first, second, reference, "first-second")
        v2 = self._ask(question, second, first, reference, "second-first")
        winner = v1.winner if v1.winner == v2.winner and v1.winner in ("first", "second") else "tie"
        return Comparison(winner, [v1, v2])
