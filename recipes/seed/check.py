"""Check seed-set parts: JSON shape, required fields, word counts, and the rules of grounded records.

Usage: python recipes/seed/check.py FILE...   (ids must be unique across all the files given)

A record is *grounded* when it has ``passages``, ``kind`` or ``verdict``; older records have none of them
and are checked as before. A grounded record has 1-2 passages ({"source", "text"}, 40-140 words), a
``kind`` (choice / numeric / exact / open) with a consistent ``key``, and every [n] it cites names one of
its passages. A keyed record's thinking and answer (a refine's good thinking, an integration's final)
end with the sentence "The answer is <key>.", and the eval's own extractor reads that key back from the
answer, so the seed teaches exactly the form the eval scores. A refine record's critique ends with the
verdict line; "fix" records carry the rewrite, "nothing to fix" records do not.
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

try:
    from preflexor_local.eval.extract import numbers_match, score
    from preflexor_local.eval.questions import DEFAULT_TOLERANCE, Question
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from preflexor_local.eval.extract import numbers_match, score
    from preflexor_local.eval.questions import DEFAULT_TOLERANCE, Question

RANGES = {  # field: (min words, max words), records without passages
    "thinking": (60, 150),
    "answer": (30, 130),
    "reflection": (15, 70),
    "weak_thinking": (35, 110),
    "critique": (30, 110),
    "improved_thinking": (60, 160),
    "final": (40, 150),
}
# Grounded records: shorter answers (a keyed answer can be brief), a correct "weak" thinking as long as a
# thinking, and a nothing-to-fix review of one short confirmed point.
GROUNDED_RANGES = RANGES | {
    "thinking": (50, 150),
    "answer": (20, 100),
    "weak_thinking": (35, 150),
    "critique": (10, 110),
    "improved_thinking": (50, 160),
    "final": (30, 130),
}
PASSAGE_WORDS = (40, 140)
FIELDS = {
    "reason": ("id", "domain", "question", "thinking", "answer"),
    "refine": ("id", "domain", "question", "weak_thinking", "critique", "improved_thinking"),
    "integrate": ("id", "domain", "question", "drafts", "final"),
}
GROUNDED_FIELDS = {
    "reason": ("id", "domain", "question", "passages", "kind", "thinking", "answer"),
    "refine": ("id", "domain", "question", "passages", "kind", "weak_thinking", "critique", "verdict"),
    "integrate": ("id", "domain", "question", "passages", "kind", "drafts", "final"),
}
KNOWN = {"task", "split", "choices", "key", "tolerance", "reflection", "improved_thinking"} | {f for fs in GROUNDED_FIELDS.values() for f in fs}
KINDS = ("choice", "numeric", "exact", "open")
VERDICTS = {"fix": "Verdict: fix.", "nothing to fix": "Verdict: nothing to fix."}
HEADINGS = ("**Core Concepts**", "**Reasoning Steps**", "**Hypothesis**")
TEXT_FIELDS = ("thinking", "answer", "reflection", "weak_thinking", "critique", "improved_thinking", "final")
MUST_CITE = ("thinking", "answer", "critique", "improved_thinking", "final")
FINAL = re.compile(r"(?:^|(?<=[.!?:)])\s+|\n)The answer is ([^\n]+?)\.$")


def words(s: str) -> int:
    return len(s.split())


def stated_answer(text: str) -> str | None:
    """X in the text's last sentence "The answer is X.", else None."""
    m = FINAL.search(text.strip())
    return m.group(1).strip() if m else None


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def key_matches(r: dict, said: str) -> bool:
    """Whether the X of "The answer is X." is the record's key: the letter, the number within tolerance, the phrase."""
    if r["kind"] == "numeric":
        try:
            value = float(said)
        except ValueError:
            return False
        return numbers_match(value, float(r["key"]), r.get("tolerance", DEFAULT_TOLERANCE))
    return said.casefold() == str(r["key"]).casefold()


def question_of(r: dict) -> Question:
    """The record as the eval would ask it, so its own extractor scores the seed's answer."""
    key = float(r["key"]) if r["kind"] == "numeric" else (r["key"],) if r["kind"] == "exact" else r["key"]
    return Question(id=str(r["id"]), question=r["question"], kind=r["kind"], answer=key, choices=tuple(r.get("choices") or ()), tolerance=r.get("tolerance"))


def check_key(r: dict) -> list[str]:
    kind = r.get("kind")
    if kind not in KINDS:
        return [f"kind must be one of {list(KINDS)}"]
    out = []
    if kind != "choice" and "choices" in r:
        out.append("choices only belong to kind choice")
    if kind != "numeric" and "tolerance" in r:
        out.append("tolerance only belongs to kind numeric")
    if kind == "open":
        return out + (["an open record has no key"] if "key" in r else [])
    key = r.get("key")
    if kind == "choice":
        ch = r.get("choices")
        if not (isinstance(ch, list) and len(ch) == 4 and all(isinstance(c, str) and c.strip() for c in ch) and len({c.strip().casefold() for c in ch}) == 4):
            out.append("choices must be 4 distinct non-empty strings")
        if key not in ("A", "B", "C", "D"):
            out.append("a choice key is one letter A-D")
    elif kind == "numeric":
        if not is_number(key):
            out.append("a numeric key is a number")
        tol = r.get("tolerance", DEFAULT_TOLERANCE)
        if not (is_number(tol) and 0 < tol < 1):
            out.append("tolerance is a relative number between 0 and 1")
    elif not (isinstance(key, str) and key.strip()):
        out.append("an exact key is a non-empty string")
    return out


def check_passages(r: dict) -> list[str]:
    ps = r.get("passages")
    if not (isinstance(ps, list) and 1 <= len(ps) <= 2):
        return ["passages must be a list of 1-2 passages"]
    out = []
    for i, p in enumerate(ps, 1):
        if not (isinstance(p, dict) and set(p) == {"source", "text"} and all(isinstance(p[k], str) and p[k].strip() for k in p)):
            out.append(f"passage {i} must be {{'source': str, 'text': str}}")
            continue
        lo, hi = PASSAGE_WORDS
        if not lo <= words(p["text"]) <= hi:
            out.append(f"passage {i} has {words(p['text'])} words (want {lo}-{hi})")
    return out


def check_grounded(r: dict) -> list[str]:
    """The rules of records with passages; returns one message per problem."""
    out = check_passages(r) + check_key(r)
    task, kind = r["task"], r.get("kind")
    texts = {f: r[f] for f in TEXT_FIELDS if isinstance(r.get(f), str)}
    texts |= {f"drafts[{i}]": d for i, d in enumerate(r.get("drafts") or []) if isinstance(d, str)}
    n_passages = len(r["passages"]) if isinstance(r.get("passages"), list) else 0
    for f, text in texts.items():
        cited = {int(n) for n in re.findall(r"\[(\d+)\]", text)}
        if bad := sorted(n for n in cited if not 1 <= n <= n_passages):
            out.append(f"{f} cites {', '.join(f'[{n}]' for n in bad)} but the record has {n_passages} passage(s)")
        if f in MUST_CITE and not cited:
            out.append(f"{f} cites no passage [n]")
    for f in ("thinking", "weak_thinking", "improved_thinking"):
        if f in texts and (missing := [h for h in HEADINGS if h not in texts[f]]):
            out.append(f"{f} lacks {', '.join(missing)}")
    if task == "refine":
        verdict = r.get("verdict")
        if verdict not in VERDICTS:
            out.append(f"verdict must be one of {list(VERDICTS)}")
        else:
            lines = [ln.strip() for ln in r.get("critique", "").strip().splitlines()]
            if not lines or lines[-1] != VERDICTS[verdict]:
                out.append(f'critique must end with the line "{VERDICTS[verdict]}" (verdict {verdict!r})')
            elif sum(ln.startswith("Verdict:") for ln in lines) != 1:
                out.append("critique has more than one verdict line")
            if not re.search(r"^1\. ", r.get("critique", ""), re.M):
                out.append("critique must be numbered points (1. …)")
            if verdict == "fix" and not r.get("improved_thinking"):
                out.append("a fix record needs improved_thinking")
            if verdict == "nothing to fix" and "improved_thinking" in r:
                out.append("a nothing-to-fix record has no improved_thinking")
    if kind not in ("choice", "numeric", "exact") or out:
        if kind == "open":
            out += [f"{f} states 'The answer is ...', but an open record has no key" for f, t in texts.items() if stated_answer(t) is not None]
        return out
    # Keyed: which texts must state the key, and which (the flawed thinking of a fix) must state another answer.
    right = {"reason": ["thinking", "answer"], "integrate": ["final"]}.get(task, [])
    if task == "refine":
        right = ["improved_thinking"] if r["verdict"] == "fix" else ["weak_thinking"]
    for f in right:
        said = stated_answer(texts.get(f, ""))
        if said is None:
            out.append(f'{f} must end with "The answer is {r["key"]}."')
        elif not key_matches(r, said):
            out.append(f"{f} ends with answer {said!r}, but the key is {r['key']!r}")
    if task == "refine" and r["verdict"] == "fix":
        said = stated_answer(texts.get("weak_thinking", ""))
        if said is None:
            out.append('weak_thinking of a keyed fix record must end with a (wrong) "The answer is Y."')
        elif key_matches(r, said):
            out.append(f"weak_thinking of a fix record states the key {said!r}; its answer should be the wrong one the critique fixes")
    scored = {"reason": "answer", "integrate": "final"}.get(task)
    if scored and not score(question_of(r), r.get(scored, "")).correct:
        out.append(f"the eval's extractor does not read the key {r['key']!r} from {scored}")
    return out


def check(path: str, ids: set | None = None) -> int:
    """Print each problem of one part as path:line: message, then a summary; return the number of problems."""
    bad, counts, kinds = 0, {}, {}
    ids = set() if ids is None else ids

    def problem(n: int, message: str) -> None:
        nonlocal bad
        print(f"{path}:{n}: {message}")
        bad += 1

    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError as e:
            problem(n, f"not JSON ({e})")
            continue
        task = r.get("task") if isinstance(r, dict) else None
        if task not in FIELDS:
            problem(n, f"task must be one of {list(FIELDS)}")
            continue
        grounded = any(f in r for f in ("passages", "kind", "verdict"))
        counts[task] = counts.get(task, 0) + 1
        if grounded:
            label = r.get("kind", "?") if task != "refine" else f"{r.get('kind', '?')}/{r.get('verdict', '?')}"
            kinds[label] = kinds.get(label, 0) + 1
        for f in (GROUNDED_FIELDS if grounded else FIELDS)[task]:
            if not r.get(f):
                problem(n, f"missing {f}")
        if unknown := sorted(set(r) - KNOWN):
            problem(n, f"unknown field(s) {', '.join(unknown)}")
        if r.get("id") in ids:
            problem(n, f"duplicate id {r.get('id')}")
        ids.add(r.get("id"))
        if "split" in r and r["split"] != "test":
            problem(n, 'split, when given, is "test"')
        for f, (lo, hi) in (GROUNDED_RANGES if grounded else RANGES).items():
            if f in r and isinstance(r[f], str) and not lo <= words(r[f]) <= hi:
                problem(n, f"{f} has {words(r[f])} words (want {lo}-{hi})")
        if task == "integrate" and not (isinstance(r.get("drafts"), list) and 2 <= len(r["drafts"]) <= 3):
            problem(n, "drafts must be a list of 2-3 answers")
        for f in ("thinking", "weak_thinking", "improved_thinking"):
            if f in r and "**" not in r[f]:
                problem(n, f"{f} has no **Heading**: sections")
        if any(t in line for t in ("<|thinking|>", "<|/thinking|>", "<think>", "<|reflect|>")):
            problem(n, "no tags inside fields; the recipe adds them")
        if grounded:
            for message in check_grounded(r):
                problem(n, message)
    tests = sum(1 for line in open(path, encoding="utf-8") if '"split": "test"' in line)
    grounded_note = f", grounded: {dict(sorted(kinds.items()))}" if kinds else ""
    print(f"{path}: {counts}{grounded_note}, held-out items: {tests}, problems: {bad}")
    return bad


def main(paths: list[str]) -> int:
    ids: set = set()
    return 1 if sum(check(p, ids) for p in paths) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
