"""The report: flat item records, the figures computed from them, markdown, and the files.

``summarize(items, conditions, baseline)`` is the only place figures are made,
and it reads nothing but the flat item records that ``report.json`` stores, so
anyone can recompute every figure from ``report.json["items"]``:

* per condition: items run; keyed items, correct, accuracy with its 95 % Wilson
  interval; readable: keyed items whose final answer gave a key at all (right or
  wrong), with its interval; for open items win/tie/loss against the baseline condition (the
  smallest round count), with Wilson intervals for the win and loss rates; mean
  generated tokens and seconds per item with 95 % intervals;
* flips inside each multi-round run (``rounds-K`` and ``adaptive``): round i →
  round i+1 over the items that ran round i+1 — the correct answers kept
  (right → right) and the wrong ones corrected (wrong → right) —, and the last
  round → the final answer where it was integrated (open items of old runs) or
  selected from the rounds (keyed items);
* flips against the baseline condition, paired by item (keyed items);
* ``adaptive``: how many items stopped early and why, mean rounds, and the tokens
  saved against ``rounds-K`` (the largest K) on the same items;
* baselines drawn in batches: samples launched, and the tokens of samples
  launched past the budget and dropped (``overshoot_tokens``).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

from .stats import flips, mean_ci, wilson

REPORT_VERSION = 1
# Bulky fields kept in items.jsonl only (transcripts, every sample's text).
_HEAVY = ("transcript", "sample_records")


def flatten(lines: list[dict]) -> list[dict]:
    """One flat record per (item, condition), without transcripts."""
    out = []
    for line in lines:
        for rec in line["records"]:
            flat = {"id": line["id"], "kind": line["kind"], "topic": line.get("topic")}
            flat.update({k: v for k, v in rec.items() if k not in _HEAVY})
            flat.setdefault("verdict", None)
            if "sample_records" in rec:
                flat["sample_predictions"] = [s["prediction"] for s in rec["sample_records"]]
                flat["sample_tokens"] = [s["tokens"] for s in rec["sample_records"]]
            out.append(flat)
    return out


def _interval(ci) -> list[float] | None:
    return None if ci is None else [ci[0], ci[1]]


def summarize(items: list[dict], conditions: list[str], baseline: str) -> dict:
    by_cond: dict[str, list[dict]] = {c: [] for c in conditions}
    for it in items:
        by_cond.setdefault(it["condition"], []).append(it)
    summary: dict = {"conditions": {}, "flips": {"within_run": {}, "versus_baseline": {}}}
    for cond, recs in by_cond.items():
        keyed = [r for r in recs if r["kind"] != "open"]
        correct = sum(1 for r in keyed if r["correct"])
        readable = sum(1 for r in keyed if r.get("prediction") is not None)
        judged = [r for r in recs if r["kind"] == "open" and r.get("verdict")]
        win, tie, loss = (sum(1 for r in judged if r["verdict"] == v) for v in ("win", "tie", "loss"))
        tokens, tokens_ci = mean_ci([r["tokens"] for r in recs])
        seconds, seconds_ci = mean_ci([r["seconds"] for r in recs])
        entry = {
            "items": len(recs),
            "keyed": len(keyed),
            "correct": correct,
            "accuracy": correct / len(keyed) if keyed else None,
            "accuracy_ci95": _interval(wilson(correct, len(keyed))),
            "readable": readable,
            "readable_rate": readable / len(keyed) if keyed else None,
            "readable_ci95": _interval(wilson(readable, len(keyed))),
            "open": {
                "judged": len(judged),
                "win": win,
                "tie": tie,
                "loss": loss,
                "win_rate": win / len(judged) if judged else None,
                "win_rate_ci95": _interval(wilson(win, len(judged))),
                "loss_rate": loss / len(judged) if judged else None,
                "loss_rate_ci95": _interval(wilson(loss, len(judged))),
            },
            "mean_tokens": tokens,
            "mean_tokens_ci95": _interval(tokens_ci),
            "mean_seconds": seconds,
            "mean_seconds_ci95": _interval(seconds_ci),
        }
        samples = [r["samples"] for r in recs if "samples" in r]
        if samples:
            entry["mean_samples"] = sum(samples) / len(samples)
            entry["mean_budget"] = sum(r["budget"] for r in recs) / len(recs)
            launched = [r for r in recs if "launched" in r]
            if launched:
                entry["mean_launched"] = sum(r["launched"] for r in launched) / len(launched)
                entry["overshoot_tokens"] = sum(r["overshoot_tokens"] for r in launched)
        adaptive = [r for r in recs if r.get("family") == "adaptive"]
        if adaptive:
            entry["adaptive"] = _adaptive(adaptive)
        summary["conditions"][cond] = entry
        multi = [r for r in keyed if r.get("rounds") and len(r["rounds"]) > 1]
        if multi:
            summary["flips"]["within_run"][cond] = _round_steps(multi)
    base = {r["id"]: r["correct"] for r in by_cond.get(baseline, []) if r["kind"] != "open"}
    for cond, recs in by_cond.items():
        if cond != baseline and base:
            summary["flips"]["versus_baseline"][cond] = flips((base[r["id"]], r["correct"]) for r in recs if r["id"] in base and r["kind"] != "open")
    return summary


def _round_steps(recs: list[dict]) -> list[dict]:
    """Round i → i+1 over the records that ran round i+1, then the last round → the final answer where it was
    integrated or selected (the last round is "round K" when every record ran K rounds)."""
    lengths = {len(r["rounds"]) for r in recs}
    steps = []
    for i in range(max(lengths) - 1):
        pairs = [(r["rounds"][i]["correct"], r["rounds"][i + 1]["correct"]) for r in recs if len(r["rounds"]) > i + 1]
        steps.append({"from": f"round {i + 1}", "to": f"round {i + 2}", **flips(pairs)})
    last = f"round {lengths.pop()}" if len(lengths) == 1 else "last round"
    for flag, label in (("integrated", "integrated"), ("selected", "selected")):
        chosen = [r for r in recs if r.get(flag)]
        if chosen:
            steps.append({"from": last, "to": label, **flips((r["rounds"][-1]["correct"], r["correct"]) for r in chosen)})
    return steps


def _adaptive(recs: list[dict]) -> dict:
    """Early stops of the adaptive condition and the tokens they saved against the fixed run of the same items."""
    versus = sum(r["tokens"] + r["tokens_saved"] for r in recs)
    saved = sum(r["tokens_saved"] for r in recs)
    reasons = Counter(r["stop_reason"] for r in recs)
    return {
        "max_rounds": max(r["max_rounds"] for r in recs),
        "versus": recs[0]["versus"],
        "mean_rounds": sum(r["rounds_run"] for r in recs) / len(recs),
        "stopped_early": sum(n for reason, n in reasons.items() if reason != "rounds"),
        "stop_reasons": dict(sorted(reasons.items())),
        "tokens_saved": saved,
        "tokens_versus": versus,
        "saved_fraction": saved / versus if versus else None,
    }


def build_report(lines: list[dict], conditions: list[str], baseline: str, meta: dict) -> dict:
    items = flatten(lines)
    return {
        "version": REPORT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **meta,
        "conditions": conditions,
        "baseline": baseline,
        "summary": summarize(items, conditions, baseline),
        "items": items,
    }


# -- markdown -------------------------------------------------------------------


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f} %"


def _ci(ci) -> str:
    return "–" if ci is None else f"{100 * ci[0]:.0f}–{100 * ci[1]:.0f} %"


def _num(x, digits: int = 0) -> str:
    return "–" if x is None else f"{x:,.{digits}f}"


def _readable(c: dict) -> str:
    # reports written before the count existed have none
    return "–" if c.get("readable_rate") is None else f"{c['readable']} ({_pct(c['readable_rate'])})"


def markdown(report: dict) -> str:
    s, base = report["summary"], report["baseline"]
    lines = [f"### Evaluation: {report['question_set']['source']} ({report['question_set']['evaluated']} items)", ""]
    lines += [
        f"| condition | accuracy | 95 % CI | correct / keyed | readable | open win / tie / loss vs {base} | mean tokens | mean s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cond in report["conditions"]:
        c = s["conditions"].get(cond)
        if not c:
            continue
        o = c["open"]
        wtl = f"{o['win']} / {o['tie']} / {o['loss']}" if o["judged"] else "–"
        extra = f" ({c['mean_samples']:.1f} samples)" if "mean_samples" in c else ""
        lines.append(
            f"| {cond}{extra} | {_pct(c['accuracy'])} | {_ci(c['accuracy_ci95'])} | {c['correct']} / {c['keyed']} | {_readable(c)} | {wtl} | "
            f"{_num(c['mean_tokens'])} | {_num(c['mean_seconds'], 1)} |"
        )
    flip_rows = []
    for cond, steps in s["flips"]["within_run"].items():
        for st in steps:
            flip_rows.append(
                f"| {cond} | {st['from']} → {st['to']} | {st['n']} | {st['right_to_wrong']} | {st['wrong_to_right']} | {st['net']:+d} | {st['stayed_right']} |"
            )
    for cond, f in s["flips"]["versus_baseline"].items():
        flip_rows.append(
            f"| {cond} | {base} → {cond} (paired) | {f['n']} | {f['right_to_wrong']} | {f['wrong_to_right']} | {f['net']:+d} | {f['stayed_right']} |"
        )
    if flip_rows:
        lines += [
            "",
            "| condition | step | keyed items | right → wrong | wrong → right (corrected) | net | right → right (kept) |",
            "|---|---|---|---|---|---|---|",
            *flip_rows,
        ]
    for cond in report["conditions"]:
        c = s["conditions"].get(cond) or {}
        if "adaptive" in c:
            a = c["adaptive"]
            why = ", ".join(f"{reason.replace('_', ' ')}: {n}" for reason, n in a["stop_reasons"].items())
            saved = f"{_num(a['tokens_saved'])} of {_num(a['tokens_versus'])} ({_pct(a['saved_fraction'])})"
            lines += [
                "",
                f"- {cond} (at most {a['max_rounds']} rounds): stopped early on {a['stopped_early']} of {c['items']} items ({why}); "
                f"mean rounds {a['mean_rounds']:.2f}; tokens saved against {a['versus']}: {saved}",
            ]
        if c.get("overshoot_tokens"):
            lines += [
                "",
                f"- {cond}: {c['mean_launched']:.1f} samples launched per item (in batches); {c['overshoot_tokens']:,} tokens past the budget dropped",
            ]
    for note in report.get("notes", []):
        lines += ["", f"- {note}"]
    return "\n".join(lines) + "\n"


def write_report(out_dir: Path, report: dict) -> dict[str, Path]:
    from ..atomic import write_bytes
    from .plot import plot_report

    paths = {"json": out_dir / "report.json", "markdown": out_dir / "report.md", "png": out_dir / "report.png"}
    write_bytes(paths["json"], json.dumps(report, indent=1, ensure_ascii=False).encode())
    write_bytes(paths["markdown"], markdown(report).encode())
    write_bytes(paths["png"], plot_report(report))
    return paths
