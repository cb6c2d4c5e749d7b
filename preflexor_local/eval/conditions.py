"""Conditions and budgets: what is run on one item, and what it cost.

Conditions, all on the same item:

* ``rounds-K`` for each K in ``--rounds``: the engine with exactly K rounds
  (critique and rewrite between rounds; no early stop). A keyed item's final
  answer is *selected* from the rounds' stated answers (``engine.select``: the
  majority, ties to the critic's "nothing to fix", then the latest), never
  merged, since merging free text can lose the key; an open item's K > 1
  answers are merged by the integrator. Every
  K uses the same seed, so their shared first rounds are the same text. The
  engine's first round does not depend on K, so ``rounds-1`` is read from round
  1 of the largest run (its answer, and the tokens and seconds of round 1's
  reasoner calls) instead of being generated again; the record says so
  (``derived_from``). That also pairs the flip counts exactly.
* ``adaptive`` (``--adaptive``): the engine with early stops, at most the
  largest K rounds: it ends when the critic finds nothing to fix or two answers
  agree. A keyed item's is read from ``rounds-K`` cut where the engine stops
  (``engine.stopped_early``: the same rounds, the answer selected from them);
  generating them again would not give the same rounds, as llama.cpp's greedy
  output depends on what its prompt cache holds. An open item's runs (with the
  same seed), since its answers are merged. Its record says why it stopped and
  the tokens it saved against ``rounds-K`` on the same item.
* ``self-consistency``: independent single-round samples at
  ``--sample-temperature``, majority vote over their extracted predictions
  (choice, numeric within tolerance, exact); not defined for open items.
* ``best-of-n``: the same samples; the pick is the pairwise judge's (a knockout
  in which a challenger replaces the incumbent only when both orders prefer it,
  the key not shown) or, with ``--selector key``, the answer key's (an oracle:
  the first correct sample; an upper bound, labelled as such).

Equal budget: the baselines' samples are drawn while the generated tokens
spent plus half the mean sample size stay below the generated tokens of the
largest round count on the same item, so the total lands as close to that
budget as whole samples allow; at least one sample, at most ``--max-samples``
(``samples.kept``). Where the reasoner takes concurrent calls they are launched
``--batch`` at a time and decode together (``samples.draw``); the samples kept
are the same as one at a time.

With ``--rag`` every condition gets the same retrieved context and the same
evidence for the same thinking (``grounding``).
Generated tokens count every call (reasoner, critic, integrator); judge calls
made to select a sample are recorded apart (``selection_tokens``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

from ..answers import Key
from ..backends.base import Backend
from ..config import Recursion, Sampling
from ..format import ThinkingFormat
from ..reasoning.engine import Engine, stopped_early
from ..reasoning.transcript import Transcript
from .extract import same_prediction, score
from .grounding import Grounding, ItemGrounding
from .judge import PairwiseJudge
from .questions import Question
from .samples import Pool, draw
from .settings import EvalSettings

ADAPTIVE = "adaptive"


def rounds_name(k: int) -> str:
    return f"rounds-{k}"


def condition_names(settings: EvalSettings) -> list[str]:
    return [rounds_name(k) for k in settings.rounds] + ([ADAPTIVE] if settings.adaptive else []) + list(settings.baselines)


def item_seed(base: int, item_id: str, tag: str) -> int:
    """A stable per-item seed (crc32, not ``hash()``, which changes between processes)."""
    return zlib.crc32(f"{base}:{item_id}:{tag}".encode()) & 0x7FFFFFFF


def item_key(q: Question) -> Key | None:
    """How a keyed item's answer is stated (its kind, options, tolerance): the engine selects it, never merges it."""
    return Key(q.kind, tuple(q.choices or ()), q.rel_tolerance) if q.keyed else None


@dataclass
class Models:
    reasoner: Backend
    critic: Backend
    integrator: Backend
    judge: PairwiseJudge | None = None


def rounds_record(q: Question, name: str, seed: int, temperature: float, t: Transcript) -> dict:
    """The record of one multi-round condition (``rounds-K`` or ``adaptive``) on ``q``: per round and final."""
    per_round = []
    for rnd in t.rounds:
        s = score(q, rnd.answer)
        per_round.append(
            {
                "index": rnd.index,
                "answer": rnd.answer,
                "prediction": s.prediction,
                "correct": s.correct,
                "tokens": rnd.completion_tokens,
                "seconds": round(rnd.seconds, 4),
                "verdict": rnd.verdict,
                "cited": rnd.cited,
            }
        )
    s = score(q, t.final_answer)
    return {
        "condition": name,
        "family": "adaptive" if name == ADAPTIVE else "rounds",
        "rounds_run": len(t.rounds),
        "seed": seed,
        "temperature": temperature,
        "final_answer": t.final_answer,
        "prediction": s.prediction,
        "correct": s.correct,
        "integrated": t.integrated,
        "selected": t.selection is not None,  # keyed: chosen from the rounds (the transcript has the votes)
        "selection_rule": t.selection["rule"] if t.selection else None,
        "stop_reason": t.stop_reason,
        "tokens": t.completion_tokens,
        "prompt_tokens": t.prompt_tokens,
        "seconds": round(t.seconds, 4),
        "calls": len(t.calls),
        "rounds": per_round,
        "transcript": t.to_dict(),
    }


def adaptive_record(q: Question, seed: int, temperature: float, t: Transcript, fixed: dict, max_rounds: int) -> dict:
    rec = rounds_record(q, ADAPTIVE, seed, temperature, t)
    rec.update(max_rounds=max_rounds, versus=fixed["condition"], tokens_saved=fixed["tokens"] - rec["tokens"])
    return rec


class ItemRunner:
    """Runs every condition on one question and returns the item's records (one JSONL line)."""

    def __init__(
        self,
        models: Models,
        settings: EvalSettings,
        sampling: Sampling,
        recursion: Recursion,
        fmt: ThinkingFormat | None = None,
        grounding: Grounding | None = None,
    ):
        self.models, self.settings, self.sampling, self.recursion = models, settings, sampling, recursion
        self.fmt = fmt or ThinkingFormat()
        self.grounding = grounding
        self.base_seed = 0 if sampling.seed is None else sampling.seed
        self.baseline_name = rounds_name(min(settings.rounds))
        # Samples decode together only where the reasoner takes concurrent calls (one round: the reasoner alone).
        self.batch = settings.batch if models.reasoner.concurrent else 1

    def selector_for(self, q: Question) -> str | None:
        sel = self.settings.selector
        if sel == "auto":
            sel = "judge" if self.models.judge is not None else "key"
        if sel == "judge" and self.models.judge is None:
            return None
        if sel == "key" and not q.keyed:
            return None
        return sel

    def _engine(self, sampling: Sampling, rounds: int, early_stop: bool = False, grounding: ItemGrounding | None = None) -> Engine:
        """The engine for a fixed ``rounds-K`` condition or one sample (it always runs K rounds), or, with
        ``early_stop``, for the adaptive condition; with ``grounding``, the item's context and evidence cache."""
        m = self.models
        recursion = replace(self.recursion, rounds=rounds, early_stop=early_stop, keyed=None)  # the item's kind keys it (``item_key``)
        context, evidence = (grounding.context, grounding.evidence) if grounding is not None else (None, None)
        return Engine(m.reasoner, m.critic, m.integrator, sampling=sampling, recursion=recursion, fmt=self.fmt, context=context, evidence=evidence)

    # -- conditions -------------------------------------------------------------
    @staticmethod
    def _first_round_record(q: Question, big: dict, t: Transcript) -> dict:
        """``rounds-1`` read from round 1 of a longer run: the reasoner's calls of that round only."""
        rnd = t.rounds[0]
        calls = [c for c in rnd.calls if c.role == "reasoner"]
        s = score(q, rnd.answer)
        tokens, seconds = sum(c.completion_tokens for c in calls), round(sum(c.seconds for c in calls), 4)
        return {
            "condition": rounds_name(1),
            "family": "rounds",
            "rounds_run": 1,
            "seed": big["seed"],
            "temperature": big["temperature"],
            "final_answer": rnd.answer,
            "prediction": s.prediction,
            "correct": s.correct,
            "integrated": False,
            "tokens": tokens,
            "prompt_tokens": sum(c.prompt_tokens for c in calls),
            "seconds": seconds,
            "calls": len(calls),
            "rounds": [{"index": 1, "answer": rnd.answer, "prediction": s.prediction, "correct": s.correct, "tokens": tokens, "seconds": seconds}],
            "derived_from": big["condition"],
        }

    def _sample(self, q: Question, i: int, grounding: ItemGrounding | None = None) -> dict:
        seed = item_seed(self.base_seed, q.id, f"sample-{i}")
        sampling = replace(self.sampling, temperature=self.settings.sample_temperature, seed=seed)
        t = self._engine(sampling, 1, grounding=grounding).run(q.prompt(), key=item_key(q))
        s = score(q, t.final_answer)
        return {
            "seed": seed,
            "answer": t.final_answer,
            "prediction": s.prediction,
            "correct": s.correct,
            "tokens": t.completion_tokens,
            "seconds": round(t.seconds, 4),
            "transcript": t.to_dict(),
        }

    def samples(self, q: Question, budget: int, estimate: float, grounding: ItemGrounding | None = None) -> Pool:
        """The baselines' samples under the equal budget (``samples.draw``); ``estimate``: one answer's tokens."""
        return draw(lambda i: self._sample(q, i, grounding), budget, self.settings.max_samples, self.batch, estimate)

    def _pool_fields(self, samples: list[dict], budget: int, pool: Pool | None = None) -> dict:
        out = {
            "family": "baseline",
            "budget": budget,
            "samples": len(samples),
            "temperature": self.settings.sample_temperature,
            "seeds": [s["seed"] for s in samples],
            "tokens": sum(s["tokens"] for s in samples),
            "seconds": round(sum(s["seconds"] for s in samples), 4),
            "sample_records": samples,
        }
        if pool is not None:  # launched together: what the batches were and what ran past the budget
            out.update(launched=pool.launched, batches=pool.batches, overshoot_tokens=pool.overshoot_tokens)
        return out

    def _self_consistency(self, q: Question, samples: list[dict], budget: int, pool: Pool | None = None) -> dict:
        groups: list[dict] = []  # prediction, count, first sample index
        for i, smp in enumerate(samples):
            if smp["prediction"] is None:
                continue
            for g in groups:
                if same_prediction(q, g["prediction"], smp["prediction"]):
                    g["count"] += 1
                    break
            else:
                groups.append({"prediction": smp["prediction"], "count": 1, "first": i})
        # The most votes wins; a tie goes to the answer seen first (deterministic).
        best = max(groups, key=lambda g: (g["count"], -g["first"]), default=None)
        chosen = samples[best["first"]] if best else samples[0]
        pred = best["prediction"] if best else None
        correct = bool(chosen["correct"]) if best else False  # the group's first sample carries its prediction
        return {
            "condition": "self-consistency",
            **self._pool_fields(samples, budget, pool),
            "final_answer": chosen["answer"],
            "prediction": pred,
            "correct": correct,
            "votes": [{"prediction": g["prediction"], "count": g["count"]} for g in groups],
        }

    def _best_of_n(self, q: Question, samples: list[dict], budget: int, selector: str, pool: Pool | None = None) -> dict:
        comparisons: list[dict] = []
        if selector == "key":
            pick = next((i for i, s in enumerate(samples) if s["correct"]), None)
            if pick is None:
                pick = next((i for i, s in enumerate(samples) if s["prediction"] is not None), 0)
        else:
            pick = 0
            for i in range(1, len(samples)):
                c = self.models.judge.compare(q.prompt(), samples[i]["answer"], samples[pick]["answer"])
                comparisons.append({"challenger": i, "incumbent": pick, **c.to_dict()})
                if c.winner == "first":
                    pick = i
        chosen = samples[pick]
        return {
            "condition": "best-of-n",
            **self._pool_fields(samples, budget, pool),
            "final_answer": chosen["answer"],
            "prediction": chosen["prediction"],
            "correct": chosen["correct"],
            "picked": pick,
            "selector": "key (oracle)" if selector == "key" else "judge",
            "selection": comparisons,
            "selection_tokens": sum(c["completion_tokens"] for c in comparisons),
        }

    def baselines(self, q: Question, budget: int, estimate: float, grounding: ItemGrounding | None = None) -> dict[str, dict]:
        """The baseline records (self-consistency, best-of-n) of ``q`` at ``budget``, from one pool of samples."""
        selector = self.selector_for(q)
        wanted = [b for b in self.settings.baselines if (b == "self-consistency" and q.keyed) or (b == "best-of-n" and selector)]
        if not wanted:
            return {}
        pool = self.samples(q, budget, estimate, grounding)
        out = {}
        if "self-consistency" in wanted:
            out["self-consistency"] = self._self_consistency(q, pool.samples, budget, pool)
        if "best-of-n" in wanted:
            out["best-of-n"] = self._best_of_n(q, pool.samples, budget, selector, pool)
        return out

    # -- one item ------------------------------------------------------------------
    def run(self, q: Question) -> dict:
        cfg, prompt, key = self.settings, q.prompt(), item_key(q)
        grounding = self.grounding.for_item(q) if self.grounding is not None else None  # retrieved once, for every condition
        records: dict[str, dict] = {}
        seed = item_seed(self.base_seed, q.id, "rounds")
        derive_one = 1 in cfg.rounds and cfg.max_rounds > 1
        largest: Transcript | None = None
        for k in sorted(cfg.rounds, reverse=True):  # the largest first: it sets the baselines' budget
            if k == 1 and derive_one:
                continue
            t = self._engine(replace(self.sampling, seed=seed), k, grounding=grounding).run(prompt, key=key)
            records[rounds_name(k)] = rounds_record(q, rounds_name(k), seed, self.sampling.temperature, t)
            if k == cfg.max_rounds:
                largest = t
                if derive_one:
                    records[rounds_name(1)] = self._first_round_record(q, records[rounds_name(k)], t)
        fixed = records[rounds_name(cfg.max_rounds)]
        if cfg.adaptive:
            if key is not None:  # the largest run, cut where the engine stops: the same calls, not a second draw of them
                t = stopped_early(largest, key)
            else:  # an open item's answers are merged: the integrator writes for the rounds it stopped at
                t = self._engine(replace(self.sampling, seed=seed), cfg.max_rounds, early_stop=True, grounding=grounding).run(prompt, key=key)
            records[ADAPTIVE] = adaptive_record(q, seed, self.sampling.temperature, t, fixed, cfg.max_rounds)
        # One answer's size (round 1's reasoner calls, the same prompt) sizes the first batch of samples.
        estimate = sum(c.completion_tokens for c in largest.rounds[0].calls if c.role == "reasoner")
        records.update(self.baselines(q, fixed["tokens"], estimate, grounding))
        if not q.keyed and self.models.judge is not None:
            self._judge_open(q, records)
        line = {"id": q.id, "kind": q.kind, "topic": q.topic, "question": q.to_dict()}
        if grounding is not None:
            line.update(grounding.record())
        return {**line, "records": [records[name] for name in condition_names(cfg) if name in records]}

    def _judge_open(self, q: Question, records: dict[str, dict]) -> None:
        """Open items: every condition against the smallest round count, both orders, the reference shown."""
        base = records.get(self.baseline_name)
        for name, rec in records.items():
            rec["verdict"] = None
            if base is None or name == self.baseline_name:
                continue
            c = self.models.judge.compare(q.prompt(), rec["final_answer"], base["final_answer"], reference=q.reference)
            rec["verdict"] = {"first": "win", "second": "loss"}.get(c.winner, "tie")
            rec["versus"] = self.baseline_name
            rec["judge"] = c.to_dict()
