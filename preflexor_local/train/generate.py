"""Preference pairs from a corpus: a teacher builds the *chosen* reply, the student's own reply is *rejected*.

Per pair (the project's own prompt wording; see ``PROMPTS``):

1. ``k`` random chunks of the corpus (``store.random_chunks``) are the seed context;
2. the teacher writes one self-contained question from them;
3. the question retrieves more context (``store.search``);
4. the teacher writes one short section per *category* (headed ``**Category**:``);
   the ``graph`` style first writes a small knowledge graph of
   ``[A] -[IS-A|RELATES-TO|INFLUENCES]-> [B]`` lines;
5. the teacher answers, seeing the context and its own thinking;
6. chosen = ``<|thinking|>\\n…sections…\\n<|/thinking|>\\nanswer``, in the tags of
   ``GenerationConfig.tags`` (``think``: ``<think>…</think>``);
7. the student answers the exact training prompt (question + cue). Phase 1 keeps
   only its plain answer (tags stripped); phase 2 keeps its full reply
   (thinking + answer). With ``samples > 1`` several candidates are drawn;
8. optional judge: the teacher scores the chosen answer and every candidate
   (0-10); candidates scoring at least the chosen one are discarded (the student
   is not worse, so the pair teaches nothing), and of the rest the best-scoring
   (the hardest negative) is kept.

Each pair is appended to the output JSONL and fsynced as soon as it is made; a
crash keeps everything before it. With ``concurrency`` N, N pairs are made at
once in threads, so N teacher requests are in flight against a server; pairs are
still written one by one by the calling thread, never more than ``n``, and an
error stops the run after the pairs already finished are written. In-process
models (a local student, a GGUF judge) take turns behind a lock. Filtered candidates are counted by reason.
Teacher calls retry (``retries``) and raise ``TeacherError`` when nothing comes
back, naming the step.
"""

from __future__ import annotations

import random
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Sampling
from ..errors import ContextOverflowError, PreflexorError, UsageError
from ..format import ThinkingFormat, parse
from ..jsonl import Appender, whole_rows
from .config import GenerationConfig
from .sources import TextCorpus, open_corpus  # noqa: F401  (re-exported: the question sources' old home)

GRAPH_RELATIONS = ("IS-A", "RELATES-TO", "INFLUENCES")

PROMPTS = {
    "system": "You are an expert scientist and a careful teacher.",
    "question": (
        "Read the passages below and write ONE exam question that a domain expert could answer without seeing them. "
        "The question must be specific, stand on its own, and must not mention the passages, a paper, a study, or any author.\n\n"
        "Passages:\n{context}\n\nReply with the question only."
    ),
    "section": (
        "Question: {question}\n\nBackground:\n{context}\n\n"
        'Write the part of an expert\'s private notes headed "{category}" for answering this question. '
        "Be brief and concrete; reason step by step where it helps. Do not answer the question in full, do not mention the background text. "
        "If nothing fits this heading, reply with an empty line.\n\nReply with the notes only, without the heading."
    ),
    "graph": (
        "Question: {question}\n\nBackground:\n{context}\n\n"
        "Sketch a compact knowledge graph for this question: 3 to 8 key concepts and the relations between them. "
        "Use only the relation types IS-A (is a kind of), RELATES-TO (is connected to) and INFLUENCES (changes or causes). "
        "Write one relation per line exactly as:\n[Concept A] -[RELATION]-> [Concept B]\n\nReply with the lines only."
    ),
    "answer": (
        "Question: {question}\n\nBackground:\n{context}\n\nYour notes:\n{thinking}\n\n"
        "Using the background and your notes, give a complete, accurate answer to the question. "
        "Do not mention the background or the notes; just answer."
    ),
    "judge": (
        "Question: {question}\n\nReference answer:\n{reference}\n\nCandidate answer:\n{candidate}\n\n"
        "Grade how correct and complete the candidate answer is on a scale from 0 (wrong or empty) to 10 (as good as an expert's). "
        "Reply with one line: SCORE: <number>"
    ),
}

_EDGE = re.compile(r"^\s*\[([^\]]+)\]\s*-\[\s*(IS-A|RELATES-TO|INFLUENCES)\s*\]->\s*\[([^\]]+)\]\s*$", re.I)
_SCORE = re.compile(r"SCORE\s*[:=]\s*(\d+(?:\.\d+)?)", re.I)


class TeacherError(PreflexorError):
    """The teacher (or judge) returned nothing usable after every retry."""


@dataclass
class GenerationReport:
    written: int = 0
    existing: int = 0  # whole rows the output already held (a resumed run)
    attempted: int = 0
    filtered: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    output: str = ""

    def to_dict(self) -> dict:
        return {
            "written": self.written,
            "existing": self.existing,
            "attempted": self.attempted,
            "filtered": dict(self.filtered),
            "seconds": round(self.seconds, 3),
            "pairs_per_minute": round(60 * self.written / self.seconds, 2) if self.seconds else None,
            "output": self.output,
        }


def scratchpad(sections: list[tuple[str, str]]) -> str:
    """The thinking body: ``**Heading**:`` blocks, blank lines between."""
    return "\n\n".join(f"**{head}**:\n\n{body.strip()}" for head, body in sections if body.strip())


def graph_lines(text: str) -> list[str]:
    """The well-formed relation lines of a teacher's graph (others dropped)."""
    out = []
    for line in text.splitlines():
        m = _EDGE.match(line)
        if m:
            out.append(f"[{m.group(1).strip()}] -[{m.group(2).upper()}]-> [{m.group(3).strip()}]")
    return out


def clean_question(text: str) -> str:
    """The teacher's question: first non-empty line, labels and quotes removed, cut after its first '?'.

    Returns "" (filtered as ``no_question``) when fewer than 4 words remain.
    """
    lines = [s.strip() for s in (text or "").splitlines() if s.strip()]
    if not lines:
        return ""
    q = re.sub(r"^(?:\*\*)?(?:question|q)\s*[:.]\s*(?:\*\*)?\s*", "", lines[0], flags=re.I).strip().strip('"').strip()
    if "?" in q:
        q = q[: q.index("?") + 1]
    return q if len(re.findall(r"[^\W\d_]+", q)) >= 4 else ""


def parse_score(text: str) -> float | None:
    m = _SCORE.search(text or "")
    return float(m.group(1)) if m else None


class PairGenerator:
    """Teacher + store (+ judge) -> preference pairs; the student is given per call (it changes as it trains).

    The pairs are written with the tags of ``config.tags`` (question cue, chosen thinking, how a phase-1 student
    reply is stripped): the one setting that decides them, so the trainer's masks can look for the same tags.
    """

    def __init__(self, teacher, store, config: GenerationConfig | None = None, judge=None, quiet: bool = False):
        self.teacher = teacher
        # A separate in-process judge takes turns when pairs are made in parallel (a lock costs nothing otherwise).
        self.judge_backend = _one_at_a_time(judge) if judge is not None else teacher
        self.store = store
        self.cfg = config or GenerationConfig()
        self.fmt = ThinkingFormat.preset(self.cfg.tags)
        self.quiet = quiet

    # -- calls -------------------------------------------------------------
    def _call(self, backend, what: str, prompt: str, temperature: float, max_tokens: int, seed: int, system: str | None = None) -> str:
        from ..backends.base import GenerationRequest

        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        last_err = None
        for attempt in range(self.cfg.retries):
            try:
                gen = backend.generate(
                    GenerationRequest(
                        messages=messages,
                        sampling=Sampling(temperature=temperature, max_tokens=max_tokens, seed=seed + attempt, repeat_penalty=1.0, dry_multiplier=0.0),
                    )
                )
                text = self.fmt.strip_tags(gen.text).strip() if backend is not None else ""
                if text:
                    return text
                last_err = "an empty reply"
            except ContextOverflowError as err:
                raise TeacherError(f"the {what} prompt does not fit: {err}", hint="lower --max-context-chars or the chunk counts, or raise --ctx") from None
            except PreflexorError as err:
                last_err = str(err)
            if attempt + 1 < self.cfg.retries:
                time.sleep(min(0.5 * 2**attempt, 4.0))
        raise TeacherError(
            f"the teacher gave no {what} after {self.cfg.retries} tries (last: {last_err})",
            hint="check that the teacher model/server works: preflexor-local ask 'hello' --model TEACHER",
        )

    def _context(self, seed: int) -> tuple[str, list]:
        hits = self.store.random_chunks(self.cfg.k_random, seed=seed)
        if not hits:
            raise UsageError("the store has no chunks to build questions from", hint="index documents first: preflexor-local index add FOLDER --store DB")
        return "\n\n".join(h.text.strip() for h in hits)[: self.cfg.max_context_chars], hits

    def _student(self, student, question: str, seed: int) -> list[tuple[str, bool]]:
        """The student's replies, each with whether a token limit cut it (then it is trained without an end of turn)."""
        from ..backends.base import GenerationRequest

        messages = [{"role": "user", "content": self.fmt.question_with_cue(question)}]
        out = []
        for s in range(self.cfg.samples):
            gen = student.generate(
                GenerationRequest(
                    messages=messages,
                    sampling=Sampling(
                        temperature=self.cfg.student_temperature,
                        top_p=0.95,
                        max_tokens=self.cfg.student_max_tokens,
                        seed=seed + s,
                        repeat_penalty=1.0,
                        dry_multiplier=0.0,
                    ),
                )
            )
            text = gen.text.strip()
            if self.cfg.phase == 1:
                parsed = parse(text, self.fmt)
                text = (parsed.answer if parsed.thinking is not None and parsed.answer else self.fmt.strip_tags(text)).strip()
            out.append((text, gen.finish_reason == "length"))
        return out

    def _score(self, question: str, reference: str, candidate: str, seed: int) -> float | None:
        reply = self._call(self.judge_backend, "judgement", PROMPTS["judge"].format(question=question, reference=reference, candidate=candidate), 0.0, 16, seed)
        return parse_score(reply)

    # -- one pair ----------------------------------------------------------
    def make_pair(self, student, seed: int, filtered: Counter) -> dict | None:
        cfg, P = self.cfg, PROMPTS
        seed_context, hits = self._context(seed)
        question = self._call(
            self.teacher, "question", P["question"].format(context=seed_context), cfg.question_temperature, min(128, cfg.teacher_max_tokens), seed, P["system"]
        )
        question = clean_question(question)
        if not question:
            filtered["no_question"] += 1
            return None
        found = self.store.search(question, cfg.k_search) if cfg.k_search else []
        seen = {h.text for h in hits}
        context = (seed_context + "".join("\n\n" + h.text.strip() for h in found if h.text not in seen))[: cfg.max_context_chars]
        sections: list[tuple[str, str]] = []
        if cfg.style == "graph":
            edges = graph_lines(
                self._call(
                    self.teacher,
                    "knowledge graph",
                    P["graph"].format(question=question, context=context),
                    cfg.teacher_temperature,
                    cfg.teacher_max_tokens,
                    seed,
                    P["system"],
                )
            )
            if not edges:
                filtered["no_graph"] += 1
                return None
            sections.append(("Knowledge Graph", "\n".join(edges)))
        for category in cfg.categories:
            body = self._call(
                self.teacher,
                f"'{category}' section",
                P["section"].format(question=question, context=context, category=category),
                cfg.teacher_temperature,
                cfg.teacher_max_tokens,
                seed,
                P["system"],
            )
            sections.append((category, body))
        thinking = scratchpad(sections)
        if not thinking:
            filtered["empty_thinking"] += 1
            return None
        answer = self._call(
            self.teacher,
            "answer",
            P["answer"].format(question=question, context=context, thinking=thinking),
            cfg.teacher_temperature,
            cfg.teacher_max_tokens,
            seed,
            P["system"],
        )
        chosen = self.fmt.thinking_block(thinking) + answer.strip()
        students = [(t, cut) for t, cut in self._student(student, question, seed) if t]
        was_cut = dict(students)
        candidates = [t for t, _ in students]
        if not candidates:
            filtered["empty_rejected"] += 1
            return None
        judge = None
        rejected = candidates[0]
        if cfg.judge:
            ref = self._score(question, answer, answer, seed)
            scored = [(self._score(question, answer, parse(c, self.fmt).answer or self.fmt.strip_tags(c), seed + 1 + i), c) for i, c in enumerate(candidates)]
            unparsable = sum(1 for s, _ in scored if s is None)
            filtered["judge_unparsable"] += unparsable
            worse = [(s, c) for s, c in scored if s is not None and (ref is None or s < ref)]
            filtered["student_not_worse"] += len(scored) - unparsable - len(worse)
            if not worse:
                return None
            best = max(worse, key=lambda t: t[0])
            rejected = best[1]
            judge = {"chosen": ref, "rejected": best[0], "candidates": [s for s, _ in scored]}
        elif len(candidates) > 1:
            rejected = random.Random(seed).choice(candidates)
        if rejected.strip() == answer.strip():
            filtered["rejected_equals_chosen"] += 1
            return None
        meta = {"phase": cfg.phase, "chunks": [h.chunk_id for h in hits], "style": cfg.style, "seed": seed}
        if judge:
            meta["judge"] = judge
        row = {"prompt": self.fmt.question_with_cue(question), "chosen": chosen, "rejected": rejected, "meta": meta}
        if was_cut[rejected]:
            row["rejected_cut"] = True
        return row

    def generate(self, n: int, output: str | Path, student, seed_offset: int = 0) -> GenerationReport:
        """Finish ``output`` to ``n`` pairs (tries at most 3x the missing count in questions); returns the counts.

        The whole rows already there count toward ``n``, and the questions go on after the last seed they
        recorded (``meta.seed``), so rerunning a killed command completes its file and repeats no prompt
        (a prompt the file already holds is filtered as ``repeated_prompt`` all the same, for files without seeds).
        """
        output = Path(output)
        have = list(whole_rows(output))
        seeds = [r["meta"]["seed"] for r in have if isinstance(r.get("meta"), dict) and isinstance(r["meta"].get("seed"), int)]
        first = self.cfg.seed + seed_offset + len(have)
        if seeds:
            first = max(first, max(seeds) + 1)
        seen = {r.get("prompt") for r in have}
        report = GenerationReport(output=str(output), existing=len(have))
        todo = max(0, n - len(have))
        t0 = time.perf_counter()
        progress = None
        if not self.quiet and todo:
            from tqdm.auto import tqdm

            progress = tqdm(total=n, initial=len(have), desc="pairs", unit="pair", file=sys.stderr, leave=False)
        try:
            with Appender(output, quiet=self.quiet) as out:
                for row in self._rows(todo, student, first, report, seen):
                    out.append(row)
                    report.written += 1
                    if progress is not None:
                        progress.update(1)
        finally:
            if progress is not None:
                progress.close()
            report.seconds = time.perf_counter() - t0
        return report

    def _rows(self, n: int, student, first_seed: int, report: GenerationReport, seen: set) -> Iterator[dict]:
        """The pairs, in the calling thread as each is made; at most ``n``, from at most ``max(3n, n + 5)`` questions."""
        if n <= 0:
            return
        limit = max(3 * n, n + 5)

        def next_seed() -> int:
            report.attempted += 1
            return first_seed + report.attempted - 1

        def fresh(row: dict | None) -> bool:
            if row is not None and row["prompt"] in seen:  # already in the file (one written before seeds were recorded)
                report.filtered["repeated_prompt"] += 1
                return False
            return row is not None

        workers = self.cfg.concurrency
        if workers > 1 and not self.teacher.concurrent:
            if not self.quiet:
                print(f"note: --concurrency {workers} ignored: the teacher is an in-process model (parallel pairs need a teacher server)", file=sys.stderr)
            workers = 1
        if workers <= 1:
            made = 0
            while made < n and report.attempted < limit:
                row = self.make_pair(student, next_seed(), report.filtered)
                if fresh(row):
                    made += 1
                    yield row
            return
        yield from self._rows_parallel(n, workers, _one_at_a_time(student), limit, next_seed, report, fresh)

    def _rows_parallel(self, n: int, workers: int, student, limit: int, next_seed, report: GenerationReport, keep) -> Iterator[dict]:
        from ..parallel import unordered

        def one(seed: int):
            filtered: Counter = Counter()  # merged by the calling thread
            return lambda: (self.make_pair(student, seed, filtered), filtered)

        made = 0

        def next_task(running: int):
            # Never more in flight than could still be written: the run stops at exactly n pairs.
            return one(next_seed()) if made + running < n and report.attempted < limit else None

        for row, filtered in unordered(next_task, workers):
            report.filtered.update(filtered)
            if keep(row):
                made += 1
                yield row


class _Serialized:
    """A backend whose calls take turns (an in-process model is not safe to call from several threads)."""

    def __init__(self, backend):
        self._backend = backend
        self._lock = threading.Lock()
        self.kind = backend.kind
        self.concurrent = True  # callers may: the calls take turns

    def generate(self, request):
        with self._lock:
            return self._backend.generate(request)


def _one_at_a_time(backend):
    return backend if backend is None or backend.concurrent else _Serialized(backend)


def open_generator(config: GenerationConfig, quiet: bool = False) -> PairGenerator:
    """A ``PairGenerator`` from settings: opens ``config.store`` and loads the teacher (and judge) models."""
    from .. import backends

    if not config.store or not config.teacher:
        raise UsageError("generating pairs needs --store and --teacher", hint="or train from a fixed dataset with --data pairs.jsonl")
    corpus = open_corpus(config.store)
    options = config.load_options()
    teacher = backends.load(config.teacher, options)
    judge = backends.load(config.judge_model, options) if config.judge_model else None
    return PairGenerator(teacher, corpus, config, judge=judge, quiet=quiet)
