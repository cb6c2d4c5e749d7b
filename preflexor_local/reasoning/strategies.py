"""How the thinking of one round becomes the improved thinking of the next.

Each strategy is a small function behind one signature, registered by name; ``--mode NAME`` picks one, and a new
strategy needs no change to the engine or the CLI. A strategy gets a ``Critic`` — one call of a critic frame
(``frames.FRAMES``: "critique", "rewrite") on the round's behalf, recorded in the round — and returns the feedback
it used, where that feedback came from, the critic's verdict, and the rewritten thinking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..format import critic_verdict
from .transcript import Round


class Critic(Protocol):
    def __call__(self, frame: str, rnd: Round, **inputs: str) -> str:
        """The critic's reply in frame ``frame`` ("critique" or "rewrite") with the frame's ``inputs``."""
        ...


@dataclass(frozen=True)
class Refinement:
    critique: str
    source: str  # "critic" or "reflection"
    improved_thinking: str | None  # None: nothing to fix, no rewrite
    verdict: str | None = None  # the critic's "fix" / "nothing to fix"; None without a structured verdict


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    reflect: bool  # whether the reasoner writes a reflection section after its thinking
    refine: Callable[[Critic, Round], Refinement]


STRATEGIES: dict[str, Strategy] = {}


def check_mode(mode: str) -> None:
    """The one check of a mode name (CLI, server defaults, requests, the engine); ``UsageError`` names the choices."""
    if mode not in STRATEGIES:
        from ..errors import UsageError

        raise UsageError(f"unknown mode {mode!r}", hint=f"choose one of: {', '.join(STRATEGIES)}", param="mode")


def strategy(name: str, summary: str, reflect: bool = False):
    def register(fn: Callable[[Critic, Round], Refinement]):
        STRATEGIES[name] = Strategy(name, summary, reflect, fn)
        return fn

    return register


@strategy("thinking", "a critic reviews the thinking, then rewrites it along its review")
def critic_feedback(critic: Critic, rnd: Round) -> Refinement:
    critique = critic("critique", rnd, thinking=rnd.thinking)
    verdict = critic_verdict(critique)
    if verdict == "nothing to fix":
        return Refinement(critique, "critic", None, verdict)
    return Refinement(critique, "critic", critic("rewrite", rnd, thinking=rnd.thinking, feedback=critique), verdict)


@strategy("reflect", "the model's own reflection is the feedback the critic rewrites the thinking with", reflect=True)
def reflection_feedback(critic: Critic, rnd: Round) -> Refinement:
    feedback = rnd.reflection or ""
    if not feedback.strip():  # no usable reflection: fall back to a critic review for this round
        return critic_feedback(critic, rnd)
    return Refinement(feedback, "reflection", critic("rewrite", rnd, thinking=rnd.thinking, feedback=feedback))
