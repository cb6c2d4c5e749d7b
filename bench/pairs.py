"""Pair generation with N teacher requests in flight (``data generate --concurrency N``), in pairs per minute.

The teacher is a real OpenAI-compatible server on loopback with parallel slots:
``preflexor-local serve --parallel 4`` on the default model (requests decoded in
one batch). The student is the embedded base GGUF in this process (it takes
turns behind a lock, as a local model must). The corpus is the answers of the
project's seed set. For each concurrency (default 1 and 4) the same number of
pairs is made into a fresh file, and the bench checks that exactly that many
whole rows were written.

    python bench/pairs.py [-n 8] [--concurrency 1,4] [--max-tokens 48] [--parallel 4] [--model M.gguf]

``--model`` (a GGUF) replaces both: the teacher server serves it and the student is it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from servers import start_serve

ROOT = Path(__file__).resolve().parents[1]


def corpus_texts() -> list[str]:
    texts = []
    for path in sorted((ROOT / "recipes" / "seed").glob("part-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            rec = json.loads(line) if line.strip() else {}
            if rec.get("answer"):
                texts.append(rec["answer"])
    return texts


def start_teacher(args, workdir: Path) -> tuple[subprocess.Popen, str]:
    flags = ["--ctx", str(args.ctx), "--parallel", str(args.parallel), "--thinking-budget", "16", "--max-queue", "16"]
    if args.model:
        flags += ["--model", args.model]
    return start_serve(flags, workdir / "teacher.log")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=8, help="pairs per run")
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--max-tokens", type=int, default=48, help="teacher and student tokens per call")
    ap.add_argument("--parallel", type=int, default=4, help="the teacher server's --parallel")
    ap.add_argument("--model", help="a GGUF for the teacher server and the student (default: the default model, and its base)")
    ap.add_argument("--ctx", type=int, default=2048, help="context of the teacher server and the student")
    args = ap.parse_args(argv)

    from preflexor_local import backends
    from preflexor_local.config import LoadOptions
    from preflexor_local.models import BASE_ALIAS
    from preflexor_local.train.config import GenerationConfig
    from preflexor_local.train.generate import PairGenerator, TextCorpus

    corpus = TextCorpus(corpus_texts())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_teacher(args, Path(tmp))
        student = backends.load(args.model or BASE_ALIAS, LoadOptions(ctx=args.ctx))
        teacher = backends.load(url, LoadOptions())
        try:
            print(
                f"teacher: serve --parallel {args.parallel} (default model) · student: {student.name} in-process · "
                f"{args.n} pairs per run · {args.max_tokens} tokens per call · {len(corpus.chunks)} corpus chunks",
                flush=True,
            )
            for c in [int(x) for x in args.concurrency.split(",")]:
                cfg = GenerationConfig(
                    concurrency=c,
                    seed=11,
                    teacher_max_tokens=args.max_tokens,
                    student_max_tokens=args.max_tokens,
                    categories=("Reasoning Steps", "Hypothesis"),
                    k_search=2,
                    max_context_chars=1500,
                )
                out = Path(tmp) / f"pairs-{c}.jsonl"
                report = PairGenerator(teacher, corpus, cfg, quiet=True).generate(args.n, out, student=student)
                lines = out.read_text(encoding="utf-8").splitlines()
                whole = sum(1 for line in lines if json.loads(line).get("chosen"))
                rows.append((c, report, len(lines), whole))
                print(f"  concurrency {c}: {report.written} pairs in {report.seconds:.1f} s ({60 * report.written / report.seconds:.2f} pairs/min)", flush=True)
        finally:
            student.close()
            teacher.close()
            proc.terminate()
            proc.wait(timeout=60)
    base = rows[0]
    print(f"\n{'concurrency':>12}{'pairs':>7}{'tried':>7}{'seconds':>9}{'pairs/min':>11}{'ratio':>7}{'rows ok':>9}")
    for c, rep, n_lines, whole in rows:
        rate, base_rate = rep.written / rep.seconds, base[1].written / base[1].seconds
        ok = "yes" if n_lines == whole == rep.written == args.n else "NO"
        print(f"{c:>12}{rep.written:>7}{rep.attempted:>7}{rep.seconds:>9.1f}{60 * rate:>11.2f}{rate / base_rate:>7.2f}{ok:>9}")
    print("\nratio: pairs/min against concurrency 1; rows ok: exactly n whole rows written, none lost or doubled")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
