"""Check a seed-set part: JSON shape, required fields, word counts. Usage: python recipes/seed/check.py FILE..."""

import json
import sys

RANGES = {  # field: (min words, max words)
    "thinking": (60, 150),
    "answer": (30, 130),
    "reflection": (15, 70),
    "weak_thinking": (35, 110),
    "critique": (30, 110),
    "improved_thinking": (60, 160),
    "final": (40, 150),
}
FIELDS = {
    "reason": ("id", "domain", "question", "thinking", "answer"),
    "refine": ("id", "domain", "question", "weak_thinking", "critique", "improved_thinking"),
    "integrate": ("id", "domain", "question", "drafts", "final"),
}


def words(s: str) -> int:
    return len(s.split())


def check(path: str) -> int:
    bad, counts, ids = 0, {}, set()
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError as e:
            print(f"{path}:{n}: not JSON ({e})")
            bad += 1
            continue
        task = r.get("task")
        if task not in FIELDS:
            print(f"{path}:{n}: task must be one of {list(FIELDS)}")
            bad += 1
            continue
        counts[task] = counts.get(task, 0) + 1
        for f in FIELDS[task]:
            if not r.get(f):
                print(f"{path}:{n}: missing {f}")
                bad += 1
        if r.get("id") in ids:
            print(f"{path}:{n}: duplicate id {r.get('id')}")
            bad += 1
        ids.add(r.get("id"))
        for f, (lo, hi) in RANGES.items():
            if f in r and isinstance(r[f], str) and not lo <= words(r[f]) <= hi:
                print(f"{path}:{n}: {f} has {words(r[f])} words (want {lo}-{hi})")
                bad += 1
        if task == "integrate" and not (isinstance(r.get("drafts"), list) and 2 <= len(r["drafts"]) <= 3):
            print(f"{path}:{n}: drafts must be a list of 2-3 answers")
            bad += 1
        for f in ("thinking", "weak_thinking", "improved_thinking"):
            if f in r and "**" not in r[f]:
                print(f"{path}:{n}: {f} has no **Heading**: sections")
                bad += 1
        if any(t in line for t in ("<|thinking|>", "<|/thinking|>", "<think>", "<|reflect|>")):
            print(f"{path}:{n}: no tags inside fields; the recipe adds them")
            bad += 1
    tests = sum(1 for line in open(path, encoding="utf-8") if '"split": "test"' in line)
    print(f"{path}: {counts}, held-out reason items: {tests}, problems: {bad}")
    return bad


if __name__ == "__main__":
    sys.exit(1 if sum(check(p) for p in sys.argv[1:]) else 0)
