"""Unedited transcripts from ``bench/demo_quality.py`` output as markdown (for the README and the issue).

python bench/transcripts.py OUT/adapter.jsonl [--ids a,b,c] [--limit 3] > transcripts.md
"""

from __future__ import annotations

import argparse
import json


def render(t: dict, label: str) -> str:
    lines = [f"### {label}: {t['question']}", "", "```"]
    for r in t["rounds"]:
        n = r["index"]  # 1-based in the transcript
        finish = {c["channel"]: c["finish_reason"] for c in r["calls"]}
        if r["thinking_source"] == "model":
            whose = "written and closed by the model" if r["thinking_closed"] else "written by the model, closed by the engine"
        else:
            whose = f"pre-filled: {r['thinking_source']}"
        fields = [
            (f"thinking ({whose})", r["thinking"]),
            ("reflection", r["reflection"]),
            (f"answer (finish: {finish.get('answer', '-')})", r["answer"]),
            (f"critique (finish: {finish.get('critique', '-')})", r["critique"]),
            (f"improved thinking (finish: {finish.get('rewrite', '-')})", r["improved_thinking"]),
        ]
        for head, text in fields:
            if text:
                lines += [f"[round {n} · {head}]", text.rstrip()]
    if t.get("integrated"):
        lines += [f"[integrated final answer (finish: {t['integration'].get('finish_reason', '-')})]", t["final_answer"].rstrip()]
    return "\n".join(lines + ["```", ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--ids", default=None, help="comma list of question ids (default: the first --limit)")
    ap.add_argument("--limit", type=int, default=3)
    ap.add_argument("--label", default="base + adapter (default)")
    args = ap.parse_args()
    rows = [json.loads(line) for line in open(args.path, encoding="utf-8") if line.strip()]
    if args.ids:
        want = args.ids.split(",")
        rows = sorted((r for r in rows if r["id"] in want), key=lambda r: want.index(r["id"]))
    for r in rows[: args.limit]:
        print(render(r["transcript"], args.label))


if __name__ == "__main__":
    main()
