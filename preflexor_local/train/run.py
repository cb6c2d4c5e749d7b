"""The active-learning loop shared by every train engine.

``train(config, source)``: for each round, get pairs (a fixed dataset, or pairs
generated with the model being trained as the student), train
``steps_per_round`` optimizer steps, then checkpoint. Layout of ``--output``::

    run.json                 config, engine, versions (written at start)
    metrics.jsonl            one line per logging step ({"type": "step", ...}) and per round ({"type": "round", ...})
    rounds/pairs-0003.jsonl  pairs generated for round 3 (appended as made)
    rounds/round-0003/       complete checkpoint of round 3 (state.json last; renamed into place atomically)
    adapter/ merged/         the final adapter and merged model (or merged/ only for a full fine-tune)
    metrics.png              loss / reward margin per step

``--resume`` continues after the last complete ``round-NNNN`` (a crash inside a
round loses only that round's training; its generated pairs are reused).
Under ``accelerate launch`` every process trains; only the main process
generates pairs and writes files, the others wait for it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..format import ThinkingFormat
from .config import TrainConfig
from .data import PreferencePair, iter_jsonl, load_pairs, pair_from_obj
from .engines import get_engine
from .session import RunContext

ROUND_DIR = "round-{:04d}"
PAIRS_FILE = "pairs-{:04d}.jsonl"


class FixedPairs:
    """A preference JSONL file, validated up front (chosen replies must close their thinking)."""

    def __init__(self, path: str | Path, fmt: ThinkingFormat | None = None):
        self.path = Path(path)
        self.pairs = load_pairs(self.path, fmt, require_thinking=True)

    def pairs_for_round(self, round_index: int, student_factory: Callable, rounds_dir: Path) -> list[PreferencePair]:
        return self.pairs


class GeneratedPairs:
    """Pairs made each round by a ``PairGenerator`` with the current model as the student."""

    def __init__(self, generator, n: int):
        self.generator = generator
        self.n = n
        self.reports: list[dict] = []

    def pairs_for_round(self, round_index: int, student_factory: Callable, rounds_dir: Path) -> list[PreferencePair]:
        path = rounds_dir / PAIRS_FILE.format(round_index)
        have = [pair_from_obj(o, str(path), n) for n, o in iter_jsonl(path)] if path.exists() else []
        if len(have) < self.n:
            report = self.generator.generate(self.n - len(have), path, student=student_factory(), seed_offset=round_index * 100_003 + len(have))
            self.reports.append(report.to_dict())
            have = [pair_from_obj(o, str(path), n) for n, o in iter_jsonl(path)] if path.exists() else []
        return have


@dataclass
class TrainResult:
    output: str
    rounds_done: int
    global_step: int
    rounds: list[dict] = field(default_factory=list)
    final: dict = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _dist(device: str = "auto"):
    """(is_main, wait_for_everyone, processes) without making accelerate a hard dependency of single-process runs.

    Under ``accelerate launch`` / ``torchrun`` (WORLD_SIZE > 1) this creates accelerate's process state; on CPU it
    must be created with ``cpu=True`` (gloo), or accelerate silently runs each process alone.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True, lambda: None, 1
    from accelerate import PartialState

    from ..devices import pick_device

    state = PartialState(cpu=pick_device(device) == "cpu")
    return state.is_main_process, state.wait_for_everyone, state.num_processes


def last_complete_round(rounds_dir: Path) -> tuple[int, dict] | None:
    best = None
    if rounds_dir.is_dir():
        for d in rounds_dir.iterdir():
            if d.is_dir() and d.name.startswith("round-") and (d / "state.json").is_file():
                state = json.loads((d / "state.json").read_text())
                if best is None or state["round"] > best[0]:
                    best = (state["round"], state)
    return best


def _append(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()


def train(cfg: TrainConfig, source=None, quiet: bool = False, merge: bool = True, on_round: Callable[[dict], None] | None = None) -> TrainResult:
    """Run (or resume) a training run; see the module docstring."""
    cfg = cfg.resolved()
    fmt = ThinkingFormat.preset(cfg.tags)
    if source is None:
        if not cfg.data:
            raise UsageError("nothing to train on", hint="pass --data pairs.jsonl, or --store DB --teacher SPEC to generate pairs each round")
        source = FixedPairs(cfg.data, fmt)
    engine = get_engine(cfg.engine, cfg.method)
    out = Path(cfg.output).expanduser()
    rounds_dir = out / "rounds"
    is_main, barrier, processes = _dist(cfg.device)
    prev = last_complete_round(rounds_dir)
    if prev is not None and not cfg.resume:
        raise UsageError(f"{out} already holds a run (round {prev[0]} complete)", hint="pass --resume to continue it, or choose a new -o")
    start, global_step, resume_from = 0, 0, None
    if cfg.resume and prev is not None:
        state = prev[1]
        if state.get("method") != cfg.method:
            raise UsageError(f"{out} holds a {state.get('method')} run, not {cfg.method}", hint="resume with the same method, or choose a new -o")
        start, global_step = state["round"] + 1, state["global_step"]
        resume_from = rounds_dir / ROUND_DIR.format(state["round"])
    if is_main:
        rounds_dir.mkdir(parents=True, exist_ok=True)
        run_info = {"config": cfg.to_dict(), "engine": cfg.engine, "processes": processes, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "resumed_at_round": start if resume_from else None}
        (out / "run.json.tmp").write_text(json.dumps(run_info, indent=2))
        os.replace(out / "run.json.tmp", out / "run.json")
    barrier()
    metrics_path = out / "metrics.jsonl"

    def log(row: dict) -> None:
        if is_main:
            _append(metrics_path, {"type": "step", **row})

    steps_per_round = cfg.steps_per_round if cfg.steps is None else -(-cfg.steps // cfg.rounds)
    ctx = RunContext(output=out, resume_from=resume_from, global_step=global_step, log=log, quiet=quiet)
    session = engine.load_runner()(cfg, ctx)
    result = TrainResult(str(out), start, global_step)
    t0 = time.perf_counter()
    try:
        if start >= cfg.rounds and not quiet:
            print(f"{out}: all {cfg.rounds} rounds already complete", file=sys.stderr)
        for r in range(start, cfg.rounds):
            if is_main:
                pairs = source.pairs_for_round(r, session.student, rounds_dir)
            barrier()
            if not is_main:
                pairs = source.pairs_for_round(r, lambda: None, rounds_dir) if isinstance(source, FixedPairs) else \
                    [pair_from_obj(o, "pairs", n) for n, o in iter_jsonl(rounds_dir / PAIRS_FILE.format(r))]
            if not pairs:
                filtered = source.reports[-1]["filtered"] if isinstance(source, GeneratedPairs) and source.reports else {}
                raise UsageError(f"round {r + 1}: no preference pairs to train on (filtered: {filtered or 'none'})",
                                 hint="check the teacher's output (data generate -n 2) or drop --judge-pairs")
            summary = session.train_round(pairs, steps_per_round, r)
            if isinstance(source, GeneratedPairs) and source.reports:
                summary["generation"] = source.reports[-1]
            if is_main:
                tmp = rounds_dir / f".{ROUND_DIR.format(r)}.tmp"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir()
                session.save_checkpoint(tmp)
                state = {"round": r, "global_step": ctx.global_step, "method": cfg.method, "summary": summary}
                (tmp / "state.json").write_text(json.dumps(state, indent=2))
                final = rounds_dir / ROUND_DIR.format(r)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)  # the round exists only once it is complete
                _append(metrics_path, {"type": "round", **summary})
            barrier()
            result.rounds.append(summary)
            result.rounds_done, result.global_step = r + 1, ctx.global_step
            if on_round:
                on_round(summary)
            if not quiet and is_main:
                keys = ("train_loss", "rewards/margins", "rewards/accuracies", "pairs_used", "dropped_long", "truncated_rejected", "missing_close")
                shown = ", ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else f"{k}={summary[k]}" for k in keys if k in summary)
                print(f"round {r + 1}/{cfg.rounds} done (step {ctx.global_step}): {shown}", file=sys.stderr)
        if is_main:
            result.final = session.save_final(out, merge=merge)
            try:
                from .plot import plot_metrics

                plot_metrics(metrics_path, out / "metrics.png")
            except Exception as err:  # a plot is a convenience; never fail a finished run over it
                print(f"warning: no metrics plot ({err})", file=sys.stderr)
        barrier()
    finally:
        session.close()
    result.seconds = round(time.perf_counter() - t0, 3)
    return result
