"""What each engine call is: one table of call frames — who is asked, the prompt, the pre-fill, the stops, the guards.

The engine asks ``FRAMES[name].build(ctx, **inputs)`` for a ``Plan`` and runs it; nothing about a call's prompt or
stops lives at a call site. Frames:

* ``thinking`` / ``reflection``: the reasoner continues its own turn inside an opened section; it ends at the
  closing tag, or at the thinking budget (the engine then closes the section itself).
* ``answer``: the reasoner answers after its sections. It may never open another section. After sections the model
  closed itself (or that were pre-filled) it may not write any tag, whole or half-formed, nor a section heading of
  its thinking; after one the engine closed at its budget only whole opening tags end it (it may still be thinking).
* ``critique``: the critic reviews a thinking text — against numbered passages when the round has evidence
  (``wording.grounded_critique_prompt``) — ending with a verdict line (``format.critic_verdict``).
* ``rewrite``: the critic rewrites the thinking along the feedback (and the passages, when there are any).
* ``integration``: the integrator merges the rounds' answers into one; with retrieved context it sees the passages
  the answers cite, numbered as the reasoner saw them.

**Small-model guards** (``Guards``), one switchable set, on by default for the embedded models and off for others
(``--guards auto|on|off``):

* the shared tag opening (``<|``) as an answer stop — half-formed tags end an answer (``format.answer_stops``);
  off, only whole opening tags do;
* heading stops (``format.heading_stops``): answers, critiques and integrations end where they write a section
  heading of the thinking (they have gone back to thinking);
* the rewrite frame (``format.rewrite_frame``): a rewrite is opened with the thinking's first heading and ends where
  it starts its layout over;
* the critique's DRY source: its DRY penalty counts the thinking it reviews as already written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..format import RewriteFrame, ThinkingFormat, heading_stops, rewrite_frame
from . import wording


@dataclass(frozen=True)
class Guards:
    """The small-model guards (see the module docstring): all on, or all off."""

    on: bool

    def tag_stops(self, fmt: ThinkingFormat) -> tuple[str, ...]:
        return fmt.answer_stops if self.on else fmt.opening_tags

    def headings(self, *thinkings: str) -> tuple[str, ...]:
        return heading_stops(*thinkings) if self.on else ()

    def rewrite(self, thinking: str) -> RewriteFrame:
        return rewrite_frame(thinking) if self.on else RewriteFrame("", ())

    def dry_source(self, thinking: str) -> str:
        return thinking if self.on else ""


@dataclass(frozen=True)
class Context:
    """What every frame of one run may read: never mutated during the run."""

    fmt: ThinkingFormat
    question: str
    guards: dict[str, Guards]  # role -> its guards
    chunks: tuple[dict, ...] = ()  # retrieved context shown to the reasoner
    system: str | None = None  # the reasoner's system prompt
    critic_system: str | None = None
    thinking_budget: int | None = None
    base: Callable[[str], bool] = lambda role: False  # role -> is its model a base model (plain completion format)?

    def reasoner_messages(self) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        if self.base("reasoner"):
            msgs.extend(wording.format_example(self.fmt))  # base models are shown the format once
        question = wording.with_context(self.question, list(self.chunks))
        return [*msgs, {"role": "user", "content": self.fmt.question_with_cue(question)}]

    def task_messages(self, role: str, system: str, task: str, prompt: str) -> list[dict]:
        examples = wording.task_example(task) if self.base(role) else []  # and each task once
        return [{"role": "system", "content": system}, *examples, {"role": "user", "content": prompt}]


@dataclass(frozen=True)
class Plan:
    """One model call, as the engine runs it (see ``GenerationRequest`` for the fields)."""

    messages: list[dict]
    prefill: str = ""
    stop: tuple[str, ...] = ()
    stops_after: tuple[tuple[str, str], ...] = ()
    dry_source: str = ""
    limit: int | None = None
    shown: str = ""  # the part of the prefill that is the reply's own text, streamed before it


@dataclass(frozen=True)
class Frame:
    name: str
    role: str  # reasoner, critic or integrator: whose model runs it
    channel: str  # the events' and the transcript's channel
    build: Callable[..., Plan] = field(repr=False)


FRAMES: dict[str, Frame] = {}


def frame(name: str, role: str, channel: str | None = None):
    def register(build: Callable[..., Plan]) -> Callable[..., Plan]:
        FRAMES[name] = Frame(name, role, channel or name, build)
        return build

    return register


@frame("thinking", "reasoner")
def _thinking(ctx: Context, text: str) -> Plan:
    return Plan(ctx.reasoner_messages(), prefill=text, stop=(ctx.fmt.think_end,), limit=ctx.thinking_budget)


@frame("reflection", "reasoner")
def _reflection(ctx: Context, text: str) -> Plan:
    return Plan(ctx.reasoner_messages(), prefill=text, stop=(ctx.fmt.reflect_end,), limit=ctx.thinking_budget)


@frame("answer", "reasoner")
def _answer(ctx: Context, text: str, engine_closed: bool) -> Plan:
    g = ctx.guards["reasoner"]
    stop = ctx.fmt.opening_tags if engine_closed else (*g.tag_stops(ctx.fmt), *g.headings(text))
    return Plan(ctx.reasoner_messages(), prefill=text, stop=stop)


@frame("critique", "critic")
def _critique(ctx: Context, thinking: str, passages: tuple[dict, ...] = ()) -> Plan:
    # A review names what the thinking lacks; restating it is the small critic's habit (the DRY source guard).
    prompt = wording.grounded_critique_prompt(ctx.question, thinking, passages) if passages else wording.critique_prompt(ctx.question, thinking)
    messages = ctx.task_messages("critic", ctx.critic_system or wording.CRITIC_SYSTEM, "critique", prompt)
    g = ctx.guards["critic"]
    return Plan(messages, stop=g.headings(thinking), dry_source=g.dry_source(thinking))


@frame("rewrite", "critic")
def _rewrite(ctx: Context, thinking: str, feedback: str, passages: tuple[dict, ...] = ()) -> Plan:
    shape = ctx.guards["critic"].rewrite(thinking)
    prompt = wording.grounded_rewrite_prompt(thinking, feedback, passages) if passages else wording.rewrite_prompt(thinking, feedback)
    messages = ctx.task_messages("critic", ctx.critic_system or wording.CRITIC_SYSTEM, "rewrite", prompt)
    return Plan(messages, prefill=shape.opening, stops_after=shape.stops_after, shown=shape.opening)


@frame("integration", "integrator", "final")
def _integration(ctx: Context, answers: list[str], thinkings: list[str]) -> Plan:
    prompt = wording.integrate_prompt(ctx.question, answers, ctx.chunks)
    messages = ctx.task_messages("integrator", wording.INTEGRATOR_SYSTEM, "final", prompt)
    g = ctx.guards["integrator"]
    return Plan(messages, stop=(*g.tag_stops(ctx.fmt), *g.headings(*thinkings)))
