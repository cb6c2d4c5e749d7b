"""The recursive engine: answer with thinking, check and improve the thinking, answer again; then merge or select.

Round 1: the reasoner writes a thinking section (opened for it by prefill), then, in reflect mode, a reflection
section, then its answer. Between rounds the strategy turns the round's thinking into improved thinking (critic
review + rewrite, or the model's own reflection + rewrite), and the reasoner answers again with that improved
thinking pre-filled as its own. With an evidence source (a RAG store) the critic checks the thinking against
passages retrieved for its claims, and cites them.

``Recursion.rounds`` is the most rounds. With ``early_stop`` (the default) the recursion ends sooner when the
critic's verdict says there is nothing to fix, or when two consecutive answers agree (the same keyed answer, or
texts at least ``AGREE`` alike); the transcript's ``stop_reason`` and an ``engine · stop`` event say why. A
critic verdict of nothing to fix also skips that round's rewrite when every round is forced.

Finally: for a keyed question (``Key``) the final answer is *selected* from the rounds' stated answers — the
majority; a tie goes to the answer the critic found nothing to fix in most often, then to the latest — since
merging free text can lose the key. Otherwise the integrator merges the answers (2+ answers, ``integrate``).

Every call's prompt, pre-fill, stops and guards come from the frame table (``frames.FRAMES``). Each reasoner
turn is generated in phases, each pre-filled with everything before it: the thinking phase stops at the closing
tag or at the thinking budget, after which the engine closes the section itself (``thinking_closed=False``).
All text goes through ``format.StreamParser``: the streamed channels and the transcript come from one parse.
"""

from __future__ import annotations

import copy
import difflib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..answers import Key, extract_key, same_key
from ..backends.base import Backend, Generation, GenerationRequest
from ..config import Recursion, Sampling
from ..errors import UsageError
from ..format import OUTSIDE, THINKING, StreamParser, ThinkingFormat, cited_passages
from .frames import FRAMES, Context, Guards, Plan
from .strategies import STRATEGIES, check_mode
from .transcript import Call, Round, Transcript

AGREE = 0.9  # two free-text answers agree when their word sequences are at least this alike (difflib ratio)

Evidence = Callable[[str, str], list[dict]]  # (question, thinking) -> passages: {"source", "text", …}


@dataclass(frozen=True)
class Event:
    """Something to show while the engine runs.

    ``kind`` is "call" when a model call starts (``text`` empty) and "text" for streamed text. ``channel`` is
    thinking, reflection, answer, critique, rewrite, final (the text that becomes the final answer), evidence
    (the passages a critique checks against) or stop (why the recursion ended, role "engine").
    """

    kind: str
    round: int
    role: str
    channel: str
    text: str = ""


def answers_agree(a: str, b: str, key: Key | None = None) -> bool:
    """Two rounds' answers agree: the same stated answer (keyed), else word sequences at least ``AGREE`` alike."""
    if key is not None:
        return same_key(key.kind, extract_key(key.kind, a, key.choices), extract_key(key.kind, b, key.choices), key.tolerance)
    wa, wb = a.lower().split(), b.lower().split()
    return bool(wa) and difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio() >= AGREE


def stop_reason(rounds: list[Round], key: Key | None) -> str | None:
    """Why an early-stopping recursion ends after the last of ``rounds``, else None: its answer agrees with the one
    before (checked before it is critiqued: no critique is made then), or its critic found nothing to fix."""
    if len(rounds) > 1 and answers_agree(rounds[-2].answer, rounds[-1].answer, key):
        return "answers_agree"
    return "nothing_to_fix" if rounds[-1].verdict == "nothing to fix" else None


def stopped_early(t: Transcript, key: Key) -> Transcript:
    """A keyed run of fixed rounds as the engine with ``early_stop`` runs it: the same rounds up to where it stops
    (``stop_reason``), the critic calls it would not have made dropped, the answer selected from those rounds.

    Exact, since every call up to the stop has the same prompt. Running them again is not: llama.cpp's greedy
    output changes with how much of a prompt its cache already holds (measured: the same first round written twice
    with different answers).
    """
    out = copy.deepcopy(t)
    out.settings.setdefault("recursion", {})["early_stop"] = True
    for i in range(1, len(out.rounds)):  # the last round is never checked: the recursion ends there anyway
        why = stop_reason(out.rounds[:i], key)
        if why is None:
            continue
        out.rounds, out.stop_reason = out.rounds[:i], why
        last = out.rounds[-1]
        last.improved_thinking = None  # no next round to start from it
        last.calls = [c for c in last.calls if c.channel != "rewrite"]
        if why == "answers_agree":  # stopped before the critique
            last.critique = last.critique_source = last.verdict = None
            last.passages, last.cited = [], []
            last.calls = [c for c in last.calls if c.role == "reasoner"]
        break
    out.selection = select(out.rounds, key)
    out.final_answer = out.selection.pop("answer")
    return out


class Engine:
    def __init__(
        self,
        reasoner: Backend,
        critic: Backend | None = None,
        integrator: Backend | None = None,
        *,
        sampling: Sampling | None = None,
        recursion: Recursion | None = None,
        fmt: ThinkingFormat | None = None,
        context: list[dict] | None = None,
        evidence: Evidence | None = None,
        on_event: Callable[[Event], None] | None = None,
    ):
        self.backends = {"reasoner": reasoner, "critic": critic or reasoner}
        self.backends["integrator"] = integrator or self.backends["critic"]
        self.sampling = sampling or Sampling()
        self.recursion = recursion or Recursion()
        check_mode(self.recursion.mode)
        self.strategy = STRATEGIES[self.recursion.mode]
        self.fmt = fmt or ThinkingFormat()
        self.context = list(context or [])
        self.evidence = evidence
        self.on_event = on_event or (lambda event: None)

    @property
    def reasoner(self) -> Backend:
        return self.backends["reasoner"]

    def guards(self, role: str) -> Guards:
        """The small-model guards for ``role``'s calls: ``--guards``, or on where its model is an embedded one."""
        setting = self.recursion.guards
        return Guards(self.backends[role].embedded if setting == "auto" else setting == "on")

    # -- public --------------------------------------------------------------
    def run(self, question: str, key: Key | None = None) -> Transcript:
        """Answer ``question``; ``key``: its answer is keyed (else ``Recursion.keyed``, if set): selected, not merged."""
        question = question.strip()
        if not question:
            raise UsageError("the question is empty", hint='pass it as an argument, or `-` to read it from stdin: echo "..." | preflexor-local ask -')
        if key is None and self.recursion.keyed:
            key = Key(self.recursion.keyed)
        ctx = Context(
            fmt=self.fmt,
            question=question,
            guards={role: self.guards(role) for role in self.backends},
            chunks=tuple(self.context),
            system=self.recursion.system,
            critic_system=self.recursion.critic_system,
            thinking_budget=self.recursion.thinking_budget,
            base=lambda role: self._is_base(self.backends[role]),
        )
        t = Transcript(
            question=question,
            mode=self.strategy.name,
            models={role: b.describe() for role, b in self.backends.items()},
            settings={"sampling": asdict(self.sampling), "recursion": asdict(self.recursion), "format": self.fmt.to_dict()},
            context=self.context,
        )
        n = self.recursion.rounds
        merged = self.recursion.integrate and n > 1 and key is None
        improved: str | None = None
        for index in range(1, n + 1):
            last = index == n
            rnd = self._reason(ctx, index, improved, final=last and not merged and key is None)
            t.rounds.append(rnd)
            if last:
                break
            if self.recursion.early_stop and (why := stop_reason(t.rounds, key)):  # before the critique: agreement only
                t.stop_reason = why
                break
            if self.evidence is not None:
                found = self.evidence(question, rnd.thinking)
                rnd.passages = [{"n": i, "source": p.get("source", "?"), "text": p["text"].strip()} for i, p in enumerate(found, 1)]
                if rnd.passages:
                    self._show_evidence(index, rnd.passages)
            ref = self.strategy.refine(lambda name, r, **inputs: self._critic_turn(ctx, name, r, **inputs), rnd)
            rnd.critique, rnd.critique_source, rnd.verdict = ref.critique.strip(), ref.source, ref.verdict
            rnd.cited = cited_passages(rnd.critique, len(rnd.passages)) if rnd.passages else []
            if self.recursion.early_stop and (why := stop_reason(t.rounds, key)):
                t.stop_reason = why
                break
            improved = self._clean_thinking(ref.improved_thinking or "") or rnd.thinking  # an empty rewrite keeps the old thinking
            rnd.improved_thinking = improved
        if t.stop_reason != "rounds":
            self._say_stop(len(t.rounds), t.stop_reason)
        answers = [r.answer for r in t.rounds if r.answer.strip()]
        if key is not None:
            t.selection = select(t.rounds, key)
            t.final_answer = t.selection.pop("answer")
        elif merged and len(answers) > 1 and t.stop_reason != "answers_agree":  # agreeing answers need no merge
            plan = FRAMES["integration"].build(ctx, answers=answers, thinkings=[r.thinking for r in t.rounds])
            gen = self._run("integration", plan, len(t.rounds))
            t.integration = self._record("integration", gen)
            t.final_answer = gen.text.strip()
            t.integrated = bool(t.final_answer)  # one that is cut to nothing leaves the last answer final
        if not t.final_answer:
            t.final_answer = answers[-1] if answers else ""
        return t

    # -- internals ------------------------------------------------------------
    @staticmethod
    def _is_base(backend: Backend) -> bool:
        """Base models (plain completion format) are shown each task once before doing it."""
        template = getattr(backend, "template", None)
        return template is not None and template.name == "plain"

    def _critic_turn(self, ctx: Context, name: str, rnd: Round, **inputs) -> str:
        """A critic call on behalf of a strategy (the ``strategies.Critic`` protocol); recorded in ``rnd.calls``."""
        if rnd.passages:
            inputs["passages"] = tuple(rnd.passages)
        plan = FRAMES[name].build(ctx, **inputs)
        gen = self._run(name, plan, rnd.index)
        rnd.calls.append(self._record(name, gen))
        return (plan.prefill + gen.text).strip()

    def _reason(self, ctx: Context, index: int, improved: str | None, final: bool) -> Round:
        fmt = self.fmt
        rnd = Round(index=index)
        parser = StreamParser(fmt)
        text = ""
        answer_channel = "final" if final else "answer"

        def add(chunk: str, show: bool) -> None:
            nonlocal text
            text += chunk
            for piece in parser.feed(chunk):
                if show:
                    channel = answer_channel if piece.channel == OUTSIDE else piece.channel
                    self.on_event(Event("text", index, "reasoner", channel, piece.text))

        def section(name: str, start: str, end: str) -> Generation:
            add(start + "\n", False)
            gen = self._run(name, FRAMES[name].build(ctx, text=text), index, on_text=lambda s: add(s, True))
            add(("" if text.endswith("\n") else "\n") + end + "\n", False)
            rnd.calls.append(self._record(name, gen))
            return gen

        if improved is None:
            rnd.thinking_closed = section(THINKING, fmt.think_start, fmt.think_end).finish_reason == "stop"
        else:
            rnd.thinking_source = "improved"
            add(fmt.thinking_block(improved), False)
        if self.strategy.reflect:
            rnd.reflection_closed = section("reflection", fmt.reflect_start, fmt.reflect_end).finish_reason == "stop"
        engine_closed = rnd.thinking_closed is False or rnd.reflection_closed is False
        plan = FRAMES["answer"].build(ctx, text=text, engine_closed=engine_closed)
        gen = self._run("answer", plan, index, channel=answer_channel, on_text=lambda s: add(s, True))
        rnd.calls.append(self._record("answer", gen, channel=answer_channel))
        parsed = parser.finish()
        rnd.thinking = parsed.thinking or ""
        rnd.reflection = parsed.reflection
        rnd.answer = parsed.answer
        return rnd

    def _clean_thinking(self, text: str) -> str:
        """Critic output as thinking to pre-fill: inside its own thinking tags if it wrote them, tags removed."""
        parsed = StreamParser(self.fmt)
        parsed.feed(text)
        inner = parsed.finish().thinking
        return self.fmt.strip_tags(inner if inner else text).strip()

    def _run(self, name: str, plan: Plan, index: int, channel: str | None = None, on_text=None) -> Generation:
        """One model call of frame ``name``."""
        frame = FRAMES[name]
        channel = channel or frame.channel
        self.on_event(Event("call", index, frame.role, channel))
        if on_text is None:
            on_text = lambda s: self.on_event(Event("text", index, frame.role, channel, s))  # noqa: E731
        if plan.shown:
            on_text(plan.shown)
        request = GenerationRequest(
            messages=[dict(m) for m in plan.messages],
            prefill=plan.prefill,
            sampling=self.sampling,
            stop=plan.stop,
            max_tokens=plan.limit,
            stops_after=plan.stops_after,
            dry_source=plan.dry_source,
        )
        return self.backends[frame.role].generate(request, on_text=on_text)

    def _record(self, name: str, gen: Generation, channel: str | None = None) -> Call:
        frame = FRAMES[name]
        return Call(
            role=frame.role,
            channel=channel or frame.channel,
            model=self.backends[frame.role].name,
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
            cached_tokens=gen.cached_tokens,
            seconds=round(gen.seconds, 4),
            ttft=None if gen.ttft is None else round(gen.ttft, 4),
            finish_reason=gen.finish_reason,
        )

    def _show_evidence(self, index: int, passages: list[dict]) -> None:
        self.on_event(Event("call", index, "critic", "evidence"))
        self.on_event(Event("text", index, "critic", "evidence", "\n".join(f"[{p['n']}] ({p['source']}) {p['text']}" for p in passages) + "\n"))

    def _say_stop(self, index: int, reason: str) -> None:
        why = {"nothing_to_fix": "the critic found nothing to fix", "answers_agree": "the last two answers agree"}[reason]
        self.on_event(Event("call", index, "engine", "stop"))
        self.on_event(Event("text", index, "engine", "stop", f"stopped after round {index} of at most {self.recursion.rounds}: {why}\n"))


def select(rounds: list[Round], key: Key) -> dict:
    """The keyed final answer: the majority of the rounds' stated answers; a tie goes to the answer the critic found
    nothing to fix in most often, then to the latest. ``answer`` is the latest round's text that states it."""
    stated = [extract_key(key.kind, r.answer, key.choices) for r in rounds]
    groups: list[list[int]] = []  # round indexes (0-based) per distinct stated answer, in order of first appearance
    for i, value in enumerate(stated):
        if value is None:
            continue
        home = next((g for g in groups if same_key(key.kind, stated[g[0]], value, key.tolerance)), None)
        if home is None:
            groups.append([i])
        else:
            home.append(i)
    out = {"kind": key.kind, "stated": stated, "votes": {str(stated[g[0]]): len(g) for g in groups}}
    if not groups:
        last = next((r for r in reversed(rounds) if r.answer.strip()), rounds[-1])
        return {**out, "chosen": None, "rule": "none stated: the latest answer", "answer": last.answer}
    most = max(len(g) for g in groups)
    tied = [g for g in groups if len(g) == most]
    rule = "majority"
    if len(tied) > 1:
        support = Counter({id(g): sum(rounds[i].verdict == "nothing to fix" for i in g) for g in tied})
        best = max(support.values())
        tied = [g for g in tied if support[id(g)] == best]
        rule = "tie: critic found nothing to fix" if len(tied) == 1 else "tie: the latest"
    chosen = max(tied, key=lambda g: g[-1])  # among those left, the one stated latest
    return {**out, "chosen": stated[chosen[0]], "rule": rule, "answer": rounds[chosen[-1]].answer}
