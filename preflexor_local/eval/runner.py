"""The evaluation loop: resume, run items (in parallel against servers), append results as they finish.

Output folder::

    settings.json   what the run measures (questions, models, sampling, rounds, …);
                    a later run into the same folder must match it, else it is refused
    items.jsonl     one line per finished item: every condition's record, with transcripts;
                    appended, flushed and fsynced as each item finishes
    report.json, report.md, report.png   rebuilt from items.jsonl at the end of every run

A killed run loses only the items in flight. On the next run a torn last line
(the kill landed mid-write) is cut off, finished items are skipped, and each
item is counted once: lines are keyed by item id and the first line wins.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from ..atomic import write_bytes
from ..config import LoadOptions, Recursion, Retrieval, Sampling
from ..errors import UsageError
from ..format import ThinkingFormat
from ..jsonl import Appender, whole_rows
from .conditions import ItemRunner, Models
from .grounding import Grounding
from .questions import BUILTIN_PREFIX, INSTRUCTIONS, Question, QuestionSet
from .settings import EvalSettings

SETTINGS_FILE, ITEMS_FILE = "settings.json", "items.jsonl"
# Settings that change how fast a run goes, not what it measures: a resumed run may change them.
# ``batch`` too: the samples kept are the same whether they are drawn together or one at a time.
_FREE = {"eval": ("concurrency", "limit", "batch"), "load": ("threads", "api_key", "timeout")}
# What a keyed item's final answer is: selected from the rounds (runs from before, which merged them, differ).
KEYED_FINAL = "selected from the rounds"


def _spec(spec: str | None) -> str:
    if spec is None or not spec.strip():
        return "default"
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec.strip()


def fingerprint(
    qset: QuestionSet,
    model,
    critic,
    integrator,
    judge,
    settings: EvalSettings,
    sampling: Sampling,
    recursion: Recursion,
    options: LoadOptions,
    fmt: ThinkingFormat,
    retrieval: Retrieval | None = None,
) -> dict:
    """Everything that decides what the numbers mean; resumed runs must match it."""
    eval_d = {k: v for k, v in settings.to_dict().items() if k not in _FREE["eval"]}
    eval_d["instructions"] = INSTRUCTIONS  # the wording asked of the model is part of what is measured
    eval_d["keyed_final"] = KEYED_FINAL
    load_d = {k: v for k, v in asdict(options).items() if k not in _FREE["load"]}
    rec = {k: v for k, v in asdict(recursion).items() if k not in ("rounds", "early_stop", "keyed")}  # the conditions and items set these
    samp = asdict(sampling)
    samp["seed"] = 0 if sampling.seed is None else sampling.seed  # eval always seeds: runs repeat
    fp = {
        # A built-in set by name (its install path may move), a file by its absolute path; the hash guards the content.
        "questions": {"source": qset.source if qset.source.startswith(BUILTIN_PREFIX) else str(Path(qset.path).resolve()), "sha256": qset.sha256},
        "models": {
            "reasoner": _spec(model),
            "critic": _spec(critic) if critic else None,
            "integrator": _spec(integrator) if integrator else None,
            "judge": _spec(judge) if judge else None,
        },
        "eval": eval_d,
        "sampling": samp,
        "recursion": rec,
        "load": load_d,
        "format": fmt.to_dict(),
        "retrieval": _retrieval(retrieval),
    }
    return json.loads(json.dumps(fp))  # as stored in settings.json (tuples become lists), so comparisons are exact


def _retrieval(retrieval: Retrieval | None) -> dict | None:
    if retrieval is None or not retrieval.rag:
        return None
    # A shipped corpus by name (its cached store is keyed by the corpus's hash), a store file by its absolute path.
    rag = retrieval.rag if retrieval.rag.startswith(BUILTIN_PREFIX) else str(Path(retrieval.rag).expanduser().resolve())
    return {"rag": rag, "rag_k": retrieval.rag_k, "evidence_k": retrieval.evidence_k}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} → {b!r}")
    return out


def read_items(path: Path) -> dict[str, dict]:
    """Finished items by id (the first line for an id wins); a torn last line is not one."""
    items: dict[str, dict] = {}
    for row in whole_rows(path):
        if isinstance(row.get("id"), str):
            items.setdefault(row["id"], row)
    return items


class Run:
    """One evaluation into an output folder."""

    def __init__(self, out_dir: str | Path, fp: dict):
        self.dir = Path(out_dir)
        self.fp = fp
        self.items_path = self.dir / ITEMS_FILE
        self.settings_path = self.dir / SETTINGS_FILE

    def check(self) -> dict | None:
        """The stored settings (None for a new folder); refuses a folder holding a different run."""
        if self.dir.exists() and not self.dir.is_dir():
            raise UsageError(f"{self.dir} exists and is not a folder", hint="give -o a folder for the report")
        if not self.settings_path.is_file():
            if self.items_path.is_file() and self.items_path.stat().st_size:
                raise UsageError(f"{self.dir} has {ITEMS_FILE} but no {SETTINGS_FILE}", hint="use another -o folder, or delete this one")
            return None
        try:
            stored = json.loads(self.settings_path.read_text())
        except (OSError, json.JSONDecodeError):
            raise UsageError(f"{self.settings_path} is unreadable", hint="use another -o folder, or delete this one to start over") from None
        diffs = _differences(stored.get("fingerprint", {}), self.fp)
        if diffs:
            more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
            raise UsageError(
                f"{self.dir} holds a run with other settings: {'; '.join(diffs[:3])}{more}", hint="use another -o folder, or delete this one to start over"
            )
        return stored

    def start(self, models: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.settings_path.is_file():
            body = {"fingerprint": self.fp, "models": models, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            write_bytes(self.settings_path, json.dumps(body, indent=2, ensure_ascii=False).encode())


def run_items(todo: list[Question], runner: ItemRunner, concurrency: int, on_done: Callable[[dict], None]) -> None:
    """Run ``todo``; ``on_done`` gets each item's line in the calling thread, as soon as it finishes."""
    from ..parallel import unordered

    items = iter(todo)

    def next_task(running: int):
        q = next(items, None)
        return None if q is None else (lambda: runner.run(q))

    for line in unordered(next_task, max(1, concurrency)):
        on_done(line)


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm

    # tqdm shows items/s and the ETA; the rate counts only items run now, not resumed ones.
    return tqdm(total=total, initial=initial, unit="item", desc="eval", file=sys.stderr, dynamic_ncols=True, disable=not enabled, smoothing=0.1)


def _open_store(retrieval: Retrieval | None):
    if retrieval is None or not retrieval.rag:
        return None
    from ..rag.evidence import open_rag

    return open_rag(retrieval.rag)


def _load_models(model, critic, integrator, judge, options: LoadOptions, settings: EvalSettings, fmt: ThinkingFormat, grounded: bool = False):
    """Load each distinct spec once (the judge too, when it names a role's model).

    When the baselines draw samples, llama.cpp models get ``--batch`` parallel slots, so an item's samples decode
    together (``samples.draw``); each call still has the whole context window."""
    from ..backends import load
    from ..reasoning.ask import load_roles
    from .judge import PairwiseJudge

    if settings.baselines and settings.batch > 1 and options.parallel < settings.batch:
        options = replace(options, parallel=settings.batch)
    reasoner, critic_b, integrator_b = load_roles(model, critic, integrator, options, grounded=grounded)
    judge_b = None
    if judge is not None:
        same = {model: reasoner, critic: critic_b, integrator: integrator_b}
        judge_b = same.get(judge) or load(judge, options)
    backends = [reasoner, critic_b, integrator_b] + ([judge_b] if judge_b else [])
    pj = PairwiseJudge(judge_b, max_tokens=settings.judge_max_tokens, fmt=fmt) if judge_b else None
    return Models(reasoner, critic_b, integrator_b, pj), backends


def evaluate(
    questions: QuestionSet,
    out_dir: str | Path,
    model: str | None = None,
    *,
    critic: str | None = None,
    integrator: str | None = None,
    judge: str | None = None,
    settings: EvalSettings | None = None,
    sampling: Sampling | None = None,
    recursion: Recursion | None = None,
    options: LoadOptions | None = None,
    fmt: ThinkingFormat | None = None,
    retrieval: Retrieval | None = None,
    progress: bool = True,
    note: Callable[[str], None] | None = None,
    loaded: Models | None = None,
) -> dict:
    """Run (or resume) an evaluation into ``out_dir`` and return the report (also written there).

    >>> from preflexor_local.eval import evaluate, load_questions, EvalSettings
    >>> report = evaluate(load_questions("builtin:materials"), "report/", "m.gguf", settings=EvalSettings(rounds="1,3"))  # doctest: +SKIP

    ``loaded`` runs already-loaded models instead of loading the specs (the
    caller keeps them; the specs still name the run in ``settings.json``).
    ``retrieval.rag``: a store every condition retrieves from alike (``grounding``).
    """
    from .conditions import condition_names, rounds_name
    from .report import build_report, write_report

    settings, sampling = settings or EvalSettings(), sampling or Sampling()
    recursion, options, fmt = recursion or Recursion(), options or LoadOptions(), fmt or ThinkingFormat()
    note = note or (lambda msg: None)
    fp = fingerprint(questions, model, critic, integrator, judge, settings, sampling, recursion, options, fmt, retrieval)
    run = Run(out_dir, fp)
    stored = run.check()

    selected = list(questions.questions[: settings.limit] if settings.limit else questions.questions)
    notes = []
    has_judge = judge is not None if loaded is None else loaded.judge is not None
    open_items = [q for q in selected if not q.keyed]
    if open_items and not has_judge:
        selected = [q for q in selected if q.keyed]
        notes.append(f"{len(open_items)} open item(s) skipped: open answers are scored only by a pairwise judge (--judge)")
    if not selected:
        raise UsageError("no questions left to evaluate", hint="open questions need --judge SPEC")
    if settings.selector == "judge" and not has_judge and "best-of-n" in settings.baselines:
        raise UsageError("--selector judge needs --judge SPEC", hint="or --selector key (the answer key picks: an oracle upper bound)")

    done = read_items(run.items_path)
    todo = [q for q in selected if q.id not in done]
    if len(todo) < len(selected):
        notes.append(f"resumed: {len(selected) - len(todo)} of {len(selected)} item(s) were finished by an earlier run into this folder")
    models_desc = stored.get("models") if stored else None
    interrupted = False
    if todo:
        store = _open_store(retrieval)  # a missing store is refused before any model loads
        models, backends, owned = loaded, [], []
        try:
            if loaded is not None:
                backends = [loaded.reasoner, loaded.critic, loaded.integrator] + ([loaded.judge.backend] if loaded.judge else [])
            else:
                models, backends = _load_models(model, critic, integrator, judge, options, settings, fmt, grounded=store is not None)
                owned = backends
            models_desc = {
                "reasoner": models.reasoner.describe(),
                "critic": models.critic.describe(),
                "integrator": models.integrator.describe(),
                "judge": models.judge.describe() if models.judge else None,
            }
            run.start(models_desc)
            concurrency = settings.concurrency
            if concurrency > 1 and not all(b.kind == "openai" for b in backends):
                note(f"--concurrency {concurrency} ignored: in-process models run one item at a time (parallel items need OpenAI-compatible servers)")
                concurrency = 1
            grounding = Grounding(store, retrieval.rag_k, retrieval.evidence_k) if store is not None else None
            runner = ItemRunner(models, settings, sampling, recursion, fmt, grounding)
            bar = progress_bar(len(selected), len(selected) - len(todo), progress)
            out = Appender(run.items_path)  # cuts a torn last line before the first append
            try:

                def finished(line: dict) -> None:
                    out.append(line)
                    done[line["id"]] = line
                    bar.update(1)

                run_items(todo, runner, concurrency, finished)
            except KeyboardInterrupt:  # keep what finished: write the report, then stop
                interrupted = True
            finally:
                out.close()
                bar.close()
        finally:
            for b in {id(b): b for b in owned}.values():
                b.close()
            if store is not None:
                store.close()
    else:
        run.start(models_desc or {})
    lines = [done[q.id] for q in selected if q.id in done]
    qdesc = {**questions.describe(), "evaluated": len(lines)}
    meta = {"question_set": qdesc, "settings": fp, "models": models_desc, "notes": notes}
    report = build_report(lines, condition_names(settings), rounds_name(min(settings.rounds)), meta)
    write_report(run.dir, report)
    if interrupted:
        note(f"interrupted: {len(lines)} of {len(selected)} items finished; run the same command again to resume")
        raise KeyboardInterrupt
    return report
