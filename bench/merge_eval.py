"""One report from the item records of several eval runs of the same settings over disjoint items.

    python bench/merge_eval.py OUT_DIR RUN_DIR [RUN_DIR ...] [--adaptive-from-fixed]

An eval on 2 cores can be split into runs over parts of a question set, one process per core; each run folder
keeps its ``items.jsonl`` and ``settings.json``. This reads every item line (an id seen twice is refused), rebuilds
the report with the eval's own ``build_report`` (figures recomputed from the item records, as for one run) and
writes ``report.json`` and ``report.md`` to OUT_DIR. Runs whose settings differ, other than the question file,
are refused.

``--adaptive-from-fixed`` brings runs made before the eval read a keyed item's ``adaptive`` condition from
``rounds-K`` (``engine.stopped_early``) to that protocol: each keyed item's adaptive record is made again from its
``rounds-K`` transcript, with no generation.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def adaptive_from_fixed(line: dict) -> dict:
    """``line`` with a keyed item's ``adaptive`` record made from its ``rounds-K`` transcript, cut where the engine stops."""
    from preflexor_local.eval.conditions import ADAPTIVE, adaptive_record, item_key
    from preflexor_local.eval.questions import parse_question
    from preflexor_local.reasoning.engine import stopped_early
    from preflexor_local.reasoning.transcript import Transcript

    q = parse_question(json.dumps(line["question"]))
    key = item_key(q)
    by = {r["condition"]: r for r in line["records"]}
    old = by.get(ADAPTIVE)
    if key is None or old is None:
        return line
    fixed = by[old["versus"]]
    t = stopped_early(Transcript.from_dict(fixed["transcript"]), key)
    new = adaptive_record(q, fixed["seed"], fixed["temperature"], t, fixed, old["max_rounds"])
    return {**line, "records": [new if r is old else r for r in line["records"]]}


def merge(out: Path, runs: list[Path], from_fixed: bool = False) -> dict:
    from preflexor_local.eval.conditions import condition_names, rounds_name
    from preflexor_local.eval.report import build_report, markdown
    from preflexor_local.eval.settings import EvalSettings
    from preflexor_local.jsonl import whole_rows

    settings = [json.loads((r / "settings.json").read_text()) for r in runs]
    fps = [{k: v for k, v in s["fingerprint"].items() if k != "questions"} for s in settings]
    for fp in fps:  # runs made before 7727472 recorded builtin:NAME as a path under the working folder
        if (fp.get("retrieval") or {}).get("rag"):
            fp["retrieval"]["rag"] = Path(fp["retrieval"]["rag"]).name
    if any(fp != fps[0] for fp in fps[1:]):
        sys.exit("merge_eval: the runs' settings differ; merge only runs of one evaluation")
    lines, seen = [], set()
    for r in runs:
        for row in whole_rows(r / "items.jsonl"):
            if row["id"] in seen:
                sys.exit(f"merge_eval: item {row['id']} is in two runs")
            seen.add(row["id"])
            lines.append(adaptive_from_fixed(row) if from_fixed else row)
    ev = fps[0]["eval"]
    cfg = EvalSettings(**{k: v for k, v in ev.items() if k in EvalSettings.__dataclass_fields__})
    meta = {
        "question_set": {"source": " + ".join(str(r) for r in runs), "evaluated": len(lines)},
        "settings": settings[0]["fingerprint"],
        "models": settings[0].get("models", {}),
        "notes": [f"merged from {len(runs)} runs: {', '.join(str(r) for r in runs)}"]
        + (["adaptive: keyed items' read from rounds-K, cut where the engine stops"] if from_fixed else []),
    }
    report = build_report(lines, condition_names(cfg), rounds_name(min(cfg.rounds)), meta)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, ensure_ascii=False))
    (out / "report.md").write_text(markdown(report))
    return report


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--adaptive-from-fixed"]
    if len(args) < 2:
        sys.exit(__doc__)
    merge(Path(args[0]), [Path(p) for p in args[1:]], from_fixed="--adaptive-from-fixed" in sys.argv)
    print((Path(args[0]) / "report.md").read_text())
