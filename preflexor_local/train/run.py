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

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_dir, write_json
from ..errors import UsageError
from ..format import ThinkingFormat
from ..jsonl import append_jsonl
from .config import GenerationConfig, PreflexorPhases, TrainConfig
from .data import PreferencePair, iter_jsonl, load_pairs, pair_from_obj
from .engines import get_engine
from .session import RunContext

ROUND_DIR = "round-{:04d}"
PAIRS_FILE = "pairs-{:04d}.jsonl"


class FixedPairs:
    """A preference JSONL file, validated up front (chosen replies must close their thinking).

    Rounds walk through the data: with ``per_round`` pairs consumed a round (steps x batch x
    accumulation x processes), round r trains on pairs r*per_round .. (r+1)*per_round - 1 of a
    stream of seeded shuffles, one per epoch, so every pair is seen once an epoch and a resumed
    run continues where it stopped. Without ``per_round`` (or when a round takes more than the
    whole file) every round gets every pair.
    """

    def __init__(self, path: str | Path, fmt: ThinkingFormat | None = None, per_round: int | None = None, seed: int = 0, masked: bool = False):
        self.path = Path(path)
        self.pairs = load_pairs(self.path, fmt, require_thinking=True, masked=masked)
        self.per_round, self.seed = per_round, seed
        self._epoch, self._perm = -1, []  # the shuffle of the epoch last asked for

    def pairs_for_round(self, round_index: int, student_factory: Callable, rounds_dir: Path) -> list[PreferencePair]:
        n, k = len(self.pairs), self.per_round
        if not k or k >= n:
            return self.pairs
        out = []
        for i in range(round_index * k, (round_index + 1) * k):
            epoch, at = divmod(i, n)
            out.append(self.pairs[self._order(epoch)[at]])
        return out

    def _order(self, epoch: int) -> list[int]:
        if self._epoch != epoch:
            import random

            self._epoch, self._perm = epoch, random.Random(self.seed * 1_000_003 + epoch).sample(range(len(self.pairs)), len(self.pairs))
        return self._perm


class GeneratedPairs:
    """Pairs made each round by a ``PairGenerator`` with the current model as the student."""

    def __init__(self, generator, n: int):
        self.generator = generator
        self.n = n
        self.reports: list[dict] = []

    @classmethod
    def for_run(cls, cfg: TrainConfig, generation: GenerationConfig, quiet: bool = False) -> GeneratedPairs:
        """Generation for run ``cfg``: the phase follows the method (DPO: 2), the seed and the thinking tags are the run's."""
        from .generate import open_generator

        gen = dataclasses.replace(generation, phase=2 if cfg.is_dpo else 1, seed=cfg.seed, tags=cfg.tags)
        return cls(open_generator(gen, quiet=quiet), gen.n)

    def pairs_for_round(self, round_index: int, student_factory: Callable, rounds_dir: Path) -> list[PreferencePair]:
        path = rounds_dir / PAIRS_FILE.format(round_index)
        have = [pair_from_obj(o, str(path), n) for n, o in iter_jsonl(path)] if path.exists() else []
        if len(have) < self.n:
            report = self.generator.generate(self.n, path, student=student_factory(), seed_offset=round_index * 100_003)
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


def train(cfg: TrainConfig, source=None, quiet: bool = False, merge: bool = True, on_round: Callable[[dict], None] | None = None) -> TrainResult:
    """Run (or resume) a training run; see the module docstring.

    ``source``: ``None`` (``cfg.data``), a ``GenerationConfig`` (pairs generated each round, in the run's tags),
    or a ready ``FixedPairs`` / ``GeneratedPairs``.
    """
    cfg = cfg.resolved()
    fmt = ThinkingFormat.preset(cfg.tags)
    if source is None:
        if not cfg.data:
            raise UsageError("nothing to train on", hint="pass --data pairs.jsonl, or --store DB --teacher SPEC to generate pairs each round")
        source = FixedPairs(cfg.data, fmt, masked=cfg.mask_thinking)
    elif isinstance(source, GenerationConfig):
        source = GeneratedPairs.for_run(cfg, source, quiet=quiet)
    if isinstance(source, GeneratedPairs) and source.generator.fmt != fmt:  # the masks would never find the closing tag
        raise UsageError(
            f"the pair generator writes {source.generator.fmt.think_end} but this run masks on {fmt.think_end}",
            hint="build the generator with the run's tags: GeneratedPairs.for_run(cfg, generation)",
        )
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
        run_info = {
            "config": cfg.to_dict(),
            "engine": cfg.engine,
            "processes": processes,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "resumed_at_round": start if resume_from else None,
        }
        write_json(out / "run.json", run_info)
    barrier()
    metrics_path = out / "metrics.jsonl"

    def log(row: dict) -> None:
        if is_main:
            append_jsonl(metrics_path, [{"type": "step", **row}])

    steps_per_round = cfg.steps_per_round if cfg.steps is None else -(-cfg.steps // cfg.rounds)
    if isinstance(source, FixedPairs) and source.per_round is None:
        source.per_round, source.seed = steps_per_round * cfg.batch_size * cfg.grad_accum * processes, cfg.seed
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
                pairs = (
                    source.pairs_for_round(r, lambda: None, rounds_dir)
                    if isinstance(source, FixedPairs)
                    else [pair_from_obj(o, "pairs", n) for n, o in iter_jsonl(rounds_dir / PAIRS_FILE.format(r))]
                )
            if not pairs:
                filtered = source.reports[-1]["filtered"] if isinstance(source, GeneratedPairs) and source.reports else {}
                raise UsageError(
                    f"round {r + 1}: no preference pairs to train on (filtered: {filtered or 'none'})",
                    hint="check the teacher's output (data generate -n 2) or drop --judge-pairs",
                )
            summary = session.train_round(pairs, steps_per_round, r)
            if isinstance(source, GeneratedPairs) and source.reports:
                summary["generation"] = source.reports[-1]
            if is_main:
                with atomic_dir(rounds_dir / ROUND_DIR.format(r)) as tmp:  # the round exists only once it is complete
                    session.save_checkpoint(tmp)
                    write_json(tmp / "state.json", {"round": r, "global_step": ctx.global_step, "method": cfg.method, "summary": summary})
                append_jsonl(metrics_path, [{"type": "round", **summary}])
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


def train_preflexor(
    base: TrainConfig,
    generation: GenerationConfig,
    phases: PreflexorPhases | None = None,
    quiet: bool = False,
    on_phase: Callable[[int, TrainConfig], None] | None = None,
) -> dict[str, TrainResult]:
    """Both PRefLexOR phases in one run, pairs generated each round: Phase I (ORPO) into ``OUTPUT/phase1``, merged;
    then Phase II (DPO-family, thinking masked) into ``OUTPUT/phase2`` on that run folder, i.e. its merged model
    (``resolve.model_dir``). Returns ``{"phase1": …, "phase2": …}``; ``phase2/merged`` is the final model.
    """
    phases = phases or PreflexorPhases()
    if not base.output:
        raise UsageError("--output is required", hint="e.g. -o ./preflexor-run (phase1/ and phase2/ are written inside)")
    out = Path(base.output).expanduser()
    plan = (
        (1, dataclasses.replace(base, method="orpo", rounds=phases.phase1_rounds, output=str(out / "phase1"))),
        (
            2,
            dataclasses.replace(
                base,
                method="dpo",
                rounds=phases.phase2_rounds,
                model=str(out / "phase1"),
                output=str(out / "phase2"),
                loss=phases.phase2_loss,
                mask_thinking=True,
            ),
        ),
    )
    results = {}
    for phase, cfg in plan:
        if on_phase is not None:
            on_phase(phase, cfg)
        results[f"phase{phase}"] = train(cfg, generation, quiet=quiet, merge=True)
    return results
