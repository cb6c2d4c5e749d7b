"""Conditions and budgets: what is run on one item, and what it cost.

Conditions, all on the same item:

* ``rounds-K`` for each K in ``--rounds``: the engine with K rounds (critique
  and rewrite between rounds, integration of the K answers when K > 1). Every
  K uses the same seed, so their shared first rounds are the same text. The
  engine's first round does not depend on K, so ``rounds-1`` is read from round
  1 of the largest run (its answer, and the tokens and seconds of round 1's
  reasoner calls) instead of being generated again; the record says so
  (``derived_from``). That also pairs the flip counts exactly.
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
budget as whole samples allow; at least one sample, at most ``--max-samples``.
Generated tokens count every call (reasoner, critic, integrator); judge calls
made to select a sample are recorded apart (``selection_tokens``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

from ..backends.base import Backend
from ..config import Recursion, Sampling
from ..format import ThinkingFormat
from ..reasoning.engine import Engine
from ..reasoning.transcript import Transcript
from .extract import same_prediction, score
from .judge import PairwiseJudge
from .questions import Question
from .settings import EvalSettings


def rounds_name(k: int) -> str:
    return f"rounds-{k}"


def condition_names(settings: EvalSettings) -> list[str]:
    return [rounds_name(k) for k in settings.rounds] + list(settings.baselines)


def item_seed(base: int, item_id: str, tag: str) -> int:
    """A stable per-item seed (crc32, not ``hash()``, which changes between processes)."""
    return zlib.crc32(f"{base}:{item_id}:{tag}".encode()) & 0x7FFFFFFF


@dataclass
class Models:
    reasoner: Backend
    critic: Backend
    integrator: Backend
    judge: PairwiseJudge | None = None


class ItemRunner:
    """Runs every condition on one question and returns the item's records (one JSONL line)."""

    def __init__(self, models: Models, settings: EvalSettings, sampling: Sampling, recursion: Recursion, fmt: ThinkingFormat | None = None):
        self.models, self.settings, self.sampling, self.recursion = models, settings, sampling, recursion
        self.fmt = fmt or ThinkingFormat()
        self.base_seed = 0 if sampling.seed is None else sampling.seed
        self.baseline_name = rounds_name(min(settings.rounds))

    def selector_for(self, q: Question) -> str | None:
        sel = self.settings.selector
        if sel == "auto":
            sel = "judge" if self.models.judge is not None else "key"
        if sel == "judge" and self.models.judge is None:
            return None
        if sel == "key" and not q.keyed:
            return None
        return sel

    def _engine(self, sampling: Sampling, rounds: int) -> Engine:
        """The engine for a fixed ``rounds-K`` condition (or one sample): it always runs K rounds."""
        m = self.models
        recursion = replace(self.recursion, rounds=rounds, early_stop=False)
        return Engine(m.reasoner, m.critic, m.integrator, sampling=sampling, recursion=recursion, fmt=self.fmt)

    # -- conditions -------------------------------------------------------------
    def _rounds_record(self, q: Question, k: int, seed: int, t: Transcript) -> dict:
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
                }
            )
        s = score(q, t.final_answer)
        return {
            "condition": rounds_name(k),
            "family": "rounds",
            "rounds_run": k,
            "seed": seed,
            "temperature": self.sampling.temperature,
            "final_answer": t.final_answer,
            "prediction": s.prediction,
            "correct": s.correct,
            "integrated": t.integrated,
            "tokens": t.completion_tokens,
            "prompt_tokens": t.prompt_tokens,
            "seconds": round(t.seconds, 4),
            "calls": len(t.calls),
            "rounds": per_round,
            "transcript": t.to_dict(),
        }

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

    def _samples(self, q: Question, budget: int) -> list[dict]:
        samples: list[dict] = []
        spent = 0
        while len(samples) < self.settings.max_samples:
            if samples and spent + (spent / len(samples)) / 2 >= budget:
                break
            seed = item_seed(self.base_seed, q.id, f"sample-{len(samples)}")
            t = self._engine(replace(self.sampling, temperature=self.settings.sample_temperature, seed=seed), 1).run(q.prompt())
            s = score(q, t.final_answer)
            samples.append(
                {
                    "seed": seed,
                    "answer": t.final_answer,
                    "prediction": s.prediction,
                    "correct": s.correct,
                    "tokens": t.completion_tokens,
                    "seconds": round(t.seconds, 4),
                    "transcript": t.to_dict(),
                }
            )
            spent += t.completion_tokens
        return samples

    def _pool_fields(self, samples: list[dict], budget: int) -> dict:
        return {
            "family": "baseline",
            "budget": budget,
            "samples": len(samples),
            "temperature": self.settings.sample_temperature,
            "seeds": [s["seed"] for s in samples],
            "tokens": sum(s["tokens"] for s in samples),
            "seconds": round(sum(s["seconds"] for s in samples), 4),
            "sample_records": samples,
        }

    def _self_consistency(self, q: Question, samples: list[dict], budget: int) -> dict:
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
            **self._pool_fields(samples, budget),
            "final_answer": chosen["answer"],
            "prediction": pred,
            "correct": correct,
            "votes": [{"prediction": g["prediction"], "count": g["count"]} for g in groups],
        }

    def _best_of_n(self, q: Question, samples: list[dict], budget: int, selector: str) -> dict:
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
            **self._pool_fields(samples, budget),
            "final_answer": chosen["answer"],
            "prediction": chosen["prediction"],
            "correct": chosen["correct"],
            "picked": pick,
            "selector": "key (oracle)" if selector == "key" else "judge",
            "selection": comparisons,
            "selection_tokens": sum(c["completion_tokens"] for c in comparisons),
        }

    # -- one item ------------------------------------------------------------------
    def run(self, q: Question) -> dict:
        cfg, prompt = self.settings, q.prompt()
        records: dict[str, dict] = {}
        seed = item_seed(self.base_seed, q.id, "rounds")
        derive_one = 1 in cfg.rounds and cfg.max_rounds > 1
        for k in sorted(cfg.rounds, reverse=True):  # the largest first: it sets the baselines' budget
            if k == 1 and derive_one:
                continue
            t = self._engine(replace(self.sampling, seed=seed), k).run(prompt)
            records[rounds_name(k)] = self._rounds_record(q, k, seed, t)
            if k == cfg.max_rounds and derive_one:
                records[rounds_name(1)] = self._first_round_record(q, records[rounds_name(k)], t)
        budget = records[rounds_name(cfg.max_rounds)]["tokens"]
        selector = self.selector_for(q)
        wanted = [b for b in cfg.baselines if (b == "self-consistency" and q.keyed) or (b == "best-of-n" and selector)]
        if wanted:
            samples = self._samples(q, budget)
            if "self-consistency" in wanted:
                records["self-consistency"] = self._self_consistency(q, samples, budget)
            if "best-of-n" in wanted:
                records["best-of-n"] = self._best_of_n(q, samples, budget, selector)
        if not q.keyed and self.models.judge is not None:
            self._judge_open(q, records)
        order = condition_names(cfg)
        return {"id": q.id, "kind": q.kind, "topic": q.topic, "question": q.to_dict(), "records": [records[name] for name in order if name in records]}

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
