"""The recursive engine: answer with thinking, improve the thinking, answer again, integrate.

Round 1: the reasoner writes a thinking section (opened for it by prefill), then,
in reflect mode, a reflection section, then its answer. Rounds 2..N: the
strategy turns the previous round's thinking into improved thinking (critic
review + rewrite, or the model's own reflection + rewrite), and the reasoner
answers again with that improved thinking pre-filled as its own. Finally the
integrator merges all answers into one (skipped for a single answer or with
``integrate=False``).

Each reasoner turn is generated in phases, each pre-filled with everything
before it: the thinking phase stops at the closing tag or at the thinking
budget, after which the engine closes the section itself (recorded as
``thinking_closed=False``), so a model that never closes its thinking still
answers. Phases share their prefix, so engines with a KV cache do not
re-evaluate it.

Messages are built fresh for every call and never mutated. All text goes
through ``format.StreamParser``: the streamed channels and the transcript come
from the same parse.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..backends.base import Backend, Generation, GenerationRequest
from ..config import Recursion, Sampling
from ..errors import UsageError
from ..format import OUTSIDE, THINKING, StreamParser, ThinkingFormat, heading_stops
from . import prompts
from .strategies import STRATEGIES
from .transcript import Call, Round, Transcript


@dataclass(frozen=True)
class Event:
    """Something to show while the engine runs.

    ``kind`` is "call" when a model call starts (``text`` empty) and "text" for
    streamed text. ``channel`` is thinking, reflection, answer, critique, rewrite
    or final (the text that becomes the final answer).
    """

    kind: str
    round: int
    role: str
    channel: str
    text: str = ""


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
        on_event: Callable[[Event], None] | None = None,
    ):
        self.reasoner = reasoner
        self.critic = critic or reasoner
        self.integrator = integrator or self.critic
        self.sampling = sampling or Sampling()
        self.recursion = recursion or Recursion()
        if self.recursion.mode not in STRATEGIES:
            raise UsageError(f"unknown mode {self.recursion.mode!r}", hint=f"choose one of: {', '.join(STRATEGIES)}")
        self.strategy = STRATEGIES[self.recursion.mode]
        self.fmt = fmt or ThinkingFormat()
        self.context = list(context or [])
        self.on_event = on_event or (lambda event: None)
        self.question = ""

    # -- public --------------------------------------------------------------
    def run(self, question: str) -> Transcript:
        question = question.strip()
        if not question:
            raise UsageError("the question is empty", hint='pass it as an argument, or `-` to read it from stdin: echo "..." | preflexor-local ask -')
        self.question = question
        t = Transcript(
            question=question,
            mode=self.strategy.name,
            models={"reasoner": self.reasoner.describe(), "critic": self.critic.describe(), "integrator": self.integrator.describe()},
            settings={"sampling": asdict(self.sampling), "recursion": asdict(self.recursion), "format": self.fmt.to_dict()},
            context=self.context,
        )
        n = self.recursion.rounds
        will_integrate = self.recursion.integrate and n > 1
        improved: str | None = None
        for index in range(1, n + 1):
            last = index == n
            rnd = self._reason(index, improved, final=last and not will_integrate)
            t.rounds.append(rnd)
            if not last:
                ref = self.strategy.refine(self, rnd)
                rnd.critique, rnd.critique_source = ref.critique.strip(), ref.source
                improved = self._clean_thinking(ref.improved_thinking) or rnd.thinking  # an empty rewrite keeps the old thinking
                rnd.improved_thinking = improved
        answers = [r.answer for r in t.rounds if r.answer.strip()]
        if will_integrate and len(answers) > 1:
            gen = self._call(
                self.integrator,
                n,
                "integrator",
                "final",
                [
                    {"role": "system", "content": prompts.INTEGRATOR_SYSTEM},
                    *self._examples(self.integrator, "final"),
                    {"role": "user", "content": prompts.integrate_prompt(question, answers)},
                ],
                stop=(*self.fmt.answer_stops, *heading_stops(*(r.thinking for r in t.rounds))),
            )
            t.integration = self._record(self.integrator, "integrator", "final", gen)
            t.final_answer = gen.text.strip()
            t.integrated = bool(t.final_answer)  # one that is cut to nothing leaves the last answer final
        if not t.final_answer:
            t.final_answer = answers[-1] if answers else ""
        return t

    def critic_call(
        self,
        rnd: Round,
        channel: str,
        prompt: str,
        prefill: str = "",
        stop: tuple[str, ...] = (),
        stops_after: tuple[tuple[str, str], ...] = (),
        dry_source: str = "",
    ) -> str:
        """A critic turn on behalf of a strategy, its reply opened with ``prefill``; recorded in ``rnd.calls``.
        ``dry_source``: text it may not copy (see ``GenerationRequest.dry_source``)."""
        system = self.recursion.critic_system or prompts.CRITIC_SYSTEM
        messages = [{"role": "system", "content": system}, *self._examples(self.critic, channel), {"role": "user", "content": prompt}]
        gen = self._call(
            self.critic, rnd.index, "critic", channel, messages, prefill=prefill, stop=stop, shown=prefill, stops_after=stops_after, dry_source=dry_source
        )
        rnd.calls.append(self._record(self.critic, "critic", channel, gen))
        return (prefill + gen.text).strip()

    # -- internals ------------------------------------------------------------
    @staticmethod
    def _is_base(backend: Backend) -> bool:
        """Base models (plain completion format) are shown each task once before doing it."""
        template = getattr(backend, "template", None)
        return template is not None and template.name == "plain"

    def _examples(self, backend: Backend, task: str) -> list[dict]:
        return prompts.task_example(task) if self._is_base(backend) else []

    def _messages(self) -> list[dict]:
        msgs = []
        if self.recursion.system:
            msgs.append({"role": "system", "content": self.recursion.system})
        if self._is_base(self.reasoner):
            msgs.extend(prompts.format_example(self.fmt))
        question = prompts.with_context(self.question, self.context)
        msgs.append({"role": "user", "content": self.fmt.question_with_cue(question)})
        return msgs

    def _reason(self, index: int, improved: str | None, final: bool) -> Round:
        fmt, messages = self.fmt, self._messages()
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

        def section(start: str, end: str, channel: str) -> Generation:
            add(start + "\n", False)
            gen = self._call(
                self.reasoner,
                index,
                "reasoner",
                channel,
                messages,
                prefill=text,
                stop=(end,),
                limit=self.recursion.thinking_budget,
                on_text=lambda s: add(s, True),
            )
            add(("" if text.endswith("\n") else "\n") + end + "\n", False)
            rnd.calls.append(self._record(self.reasoner, "reasoner", channel, gen))
            return gen

        if improved is None:
            rnd.thinking_closed = section(fmt.think_start, fmt.think_end, THINKING).finish_reason == "stop"
        else:
            rnd.thinking_source = "improved"
            add(fmt.thinking_block(improved), False)
        if self.strategy.reflect:
            rnd.reflection_closed = section(fmt.reflect_start, fmt.reflect_end, "reflection").finish_reason == "stop"
        # The answer may not open another section: a model that tries is cut there. After sections the model closed
        # itself (or that were pre-filled) it may not write any tag, whole or half-formed, either; after one the engine
        # closed at its budget the model may still close it itself, and the answer is what follows its closing tag.
        # Nor may it, then, write a section heading of its thinking (``format.heading_stops``).
        engine_closed = rnd.thinking_closed is False or rnd.reflection_closed is False
        stop = fmt.opening_tags if engine_closed else (*fmt.answer_stops, *heading_stops(text))
        gen = self._call(self.reasoner, index, "reasoner", answer_channel, messages, prefill=text, stop=stop, on_text=lambda s: add(s, True))
        rnd.calls.append(self._record(self.reasoner, "reasoner", answer_channel, gen))
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

    def _call(
        self,
        backend: Backend,
        index: int,
        role: str,
        channel: str,
        messages: list[dict],
        prefill: str = "",
        stop: tuple[str, ...] = (),
        limit: int | None = None,
        on_text=None,
        stops_after: tuple[tuple[str, str], ...] = (),
        shown: str = "",
        dry_source: str = "",
    ) -> Generation:
        """One model call. ``shown``: the part of the prefill that is the reply's own text, streamed before it."""
        self.on_event(Event("call", index, role, channel))
        if on_text is None:
            on_text = lambda s: self.on_event(Event("text", index, role, channel, s))  # noqa: E731
        if shown:
            on_text(shown)
        request = GenerationRequest(
            messages=[dict(m) for m in messages],
            prefill=prefill,
            sampling=self.sampling,
            stop=stop,
            max_tokens=limit,
            stops_after=stops_after,
            dry_source=dry_source,
        )
        return backend.generate(request, on_text=on_text)

    @staticmethod
    def _record(backend: Backend, role: str, channel: str, gen: Generation) -> Call:
        return Call(
            role=role,
            channel=channel,
            model=backend.name,
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
            cached_tokens=gen.cached_tokens,
            seconds=round(gen.seconds, 4),
            ttft=None if gen.ttft is None else round(gen.ttft, 4),
            finish_reason=gen.finish_reason,
        )
