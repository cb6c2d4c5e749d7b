"""How the thinking of one round becomes the improved thinking of the next.

Each strategy is a small function behind one signature, registered by name;
``--mode NAME`` picks one, and a new strategy needs no change to the engine or
the CLI. A strategy returns the feedback it used, where that feedback came
from, and the rewritten thinking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..format import heading_stops, rewrite_frame
from . import prompts

if TYPE_CHECKING:
    from .engine import Engine
    from .transcript import Round


@dataclass(frozen=True)
class Refinement:
    critique: str
    source: str  # "critic" or "reflection"
    improved_thinking: str


@dataclass(frozen=True)
class Strategy:
    name: str
    summary: str
    reflect: bool  # whether the reasoner writes a reflection section after its thinking
    refine: Callable[[Engine, Round], Refinement]


STRATEGIES: dict[str, Strategy] = {}


def strategy(name: str, summary: str, reflect: bool = False):
    def register(fn: Callable[[Engine, Round], Refinement]):
        STRATEGIES[name] = Strategy(name, summary, reflect, fn)
        return fn

    return register


@strategy("thinking", "a critic reviews the thinking, then rewrites it along its review")
def critic_feedback(engine: Engine, rnd: Round) -> Refinement:
    # A review names what the thinking lacks; restating it is the small critic's habit: DRY makes copying it verbatim
    # cost what repeating itself costs.
    prompt = prompts.critique_prompt(engine.question, rnd.thinking)
    critique = engine.critic_call(rnd, "critique", prompt, stop=heading_stops(rnd.thinking), dry_source=rnd.thinking)
    return Refinement(critique, "critic", rewrite(engine, rnd, critique))


@strategy("reflect", "the model's own reflection is the feedback the critic rewrites the thinking with", reflect=True)
def reflection_feedback(engine: Engine, rnd: Round) -> Refinement:
    feedback = rnd.reflection or ""
    if not feedback.strip():  # no usable reflection: fall back to a critic review for this round
        return critic_feedback(engine, rnd)
    return Refinement(feedback, "reflection", rewrite(engine, rnd, feedback))


def rewrite(engine: Engine, rnd: Round, feedback: str) -> str:
    """The critic's rewrite of the round's thinking along ``feedback``.

    The prompt asks it to keep the thinking's structure and headings: the engine opens the rewrite with the first
    heading, and a rewrite that opens one of them again, or goes on past the last section, has finished and is
    starting over (small models do, until the token limit): it ends there (``format.rewrite_frame``).
    """
    frame = rewrite_frame(rnd.thinking)
    prompt = prompts.rewrite_prompt(rnd.thinking, feedback)
    return engine.critic_call(rnd, "rewrite", prompt, prefill=frame.opening, stops_after=frame.stops_after)
