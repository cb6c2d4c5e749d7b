"""Benchmark the RAG store against the raw engines it wraps.

1. Ingest: ``index_folder`` on a generated corpus vs raw ``SentenceTransformer.encode`` of exactly the
   same chunks (ratio = store throughput / raw throughput; the store should cost little beyond embedding).
2. KNN: sqlite-vec ``vec0`` (cosine, k=10) at each size vs numpy brute force (dot + argpartition, one BLAS thread) on the
   same random unit vectors, with recall@k, insert rate and file size per 100k vectors.

    python bench/rag.py                          # default: 60 files x 2 rounds, KNN at 10k, 100k, 1M (about 2-3 min on 2 cores)
    python bench/rag.py --files 40 --sizes 10000,100000 --queries 20
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

WORDS = (
    "alloy fibre crack tablet protein mineral lattice stress strain yield polymer ceramic collagen chitin keratin silk "
    "nacre bone enamel wood cellulose lignin graphene carbon nanotube composite hierarchy toughness stiffness strength "
    "fatigue fracture interface bridging sliding twisting buckling helix sheet crystal amorphous matrix hydrogen bond "
    "network energy dissipation model simulation experiment the of and in a to is by with from as that which"
).split()


def make_corpus(root: Path, files: int, words: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        sentences = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "." for _ in range(words // 14)]
        paras = ["\n".join(sentences[j : j + 5]) for j in range(0, len(sentences), 5)]
        (root / f"paper{i:04d}.md").write_text(f"# Paper {i}\n\n" + "\n\n".join(paras) + "\n")


def bench_ingest(files: int, words: int, batch: int, rounds: int = 2) -> dict:
    from preflexor_local.rag import IndexConfig, index_folder, open_store
    from preflexor_local.rag.chunking import chunk_text
    from preflexor_local.rag.embed import load_embedder
    from preflexor_local.rag.extract import extract

    emb = load_embedder()
    emb.encode(["warm up the model"] * batch, batch_size=batch)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpus"
        make_corpus(root, files, words)
        t = time.perf_counter()
        texts = [c.text for p in sorted(root.iterdir()) for c in chunk_text(extract(p, p.read_bytes()), emb.token_offsets, 200, 32)]
        chunk_s = time.perf_counter() - t
        # Time spent inside the model during index_folder, to split the store's own cost from embedding;
        # that split holds even when a busy machine makes whole runs vary by +-30 %.
        in_encode = [0.0]
        plain_encode = emb.encode

        def counted_encode(batch_texts, batch_size=64):
            t0 = time.perf_counter()
            try:
                return plain_encode(batch_texts, batch_size=batch_size)
            finally:
                in_encode[0] += time.perf_counter() - t0

        raw_s, store_s, overhead_s = float("inf"), float("inf"), float("inf")
        for r in range(rounds):  # alternate raw and store runs and keep the best of each
            t = time.perf_counter()
            emb.encode(texts, batch_size=batch)
            raw_s = min(raw_s, time.perf_counter() - t)
            db = Path(tmp) / f"bench{r}.db"
            in_encode[0] = 0.0
            emb.encode = counted_encode
            try:
                t = time.perf_counter()
                report = index_folder([root], db, IndexConfig(batch_size=batch, progress=False))
                elapsed = time.perf_counter() - t
            finally:
                emb.encode = plain_encode
            store_s = min(store_s, elapsed)
            overhead_s = min(overhead_s, elapsed - in_encode[0])
        assert report.chunks_added == len(texts), (report.chunks_added, len(texts))
        with open_store(db, readonly=True) as store:
            size = store.stats()["size_bytes"]
            try:  # dbstat: bytes per table, to separate text + metadata from vec0's preallocated vector pages
                with store.read() as conn:
                    other = conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name NOT LIKE 'vectors%'").fetchone()[0]
            except Exception:
                other = None
            dim = store.dim
        t = time.perf_counter()
        again = index_folder([root], db, IndexConfig(progress=False))
        rerun_s = time.perf_counter() - t
        assert again.unchanged == files
    n = len(texts)
    return {
        "files": files,
        "chunks": n,
        "chunking_s": chunk_s,
        "raw_encode_s": raw_s,
        "raw_chunks_per_s": n / raw_s,
        "store_s": store_s,
        "store_chunks_per_s": n / store_s,
        "ratio": (n / store_s) / (n / raw_s),
        "overhead_s": overhead_s,
        "overhead_ms_per_chunk": overhead_s / n * 1000,
        "store_bytes": size,
        "bytes_per_100k_chunks": (other / n + 4 * dim) * 100_000 if other else size / n * 100_000,
        "rerun_unchanged_s": rerun_s,
    }


def _timed(fn, queries) -> tuple[list, float]:
    """Results and the median milliseconds per query (one warm-up call first; medians resist a busy machine)."""
    import statistics

    fn(queries[0])
    out, times = [], []
    for q in queries:
        t = time.perf_counter()
        out.append(fn(q))
        times.append((time.perf_counter() - t) * 1000)
    return out, statistics.median(times)


def bench_knn(n: int, dim: int, queries: int, k: int, tmp: Path) -> dict:
    import numpy as np

    from preflexor_local.rag.db import connect

    rng = np.random.default_rng(n)
    data = rng.standard_normal((n, dim), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    qs = rng.standard_normal((queries, dim), dtype=np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)

    path = tmp / f"knn{n}.db"
    conn = connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"CREATE VIRTUAL TABLE v USING vec0(embedding float[{dim}] distance_metric=cosine)")
    t = time.perf_counter()
    step = 10_000
    for i in range(0, n, step):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO v(rowid, embedding) VALUES (?, ?)", ((j + 1, data[j].tobytes()) for j in range(i, min(i + step, n))))
        conn.execute("COMMIT")
    insert_s = time.perf_counter() - t
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size

    def sqlite_vec_knn(q):
        return [r[0] - 1 for r in conn.execute("SELECT rowid FROM v WHERE embedding MATCH ? AND k = ? ORDER BY distance", (q.tobytes(), k))]

    def numpy_knn(q):
        scores = data @ q
        top = np.argpartition(-scores, k)[:k]
        return top[np.argsort(-scores[top])].tolist()

    vec_ids, vec_ms = _timed(sqlite_vec_knn, qs)
    conn.close()
    try:  # one BLAS thread, like sqlite-vec's one core; thread wake-ups on a busy machine otherwise add ~8 ms
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib

        threadpool_limits = lambda limits: contextlib.nullcontext()  # noqa: E731
    with threadpool_limits(limits=1):
        np_ids, np_ms = _timed(numpy_knn, qs)
    recall = sum(len(set(a) & set(b)) for a, b in zip(vec_ids, np_ids)) / (k * queries)
    path.unlink()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return {
        "n": n,
        "insert_s": insert_s,
        "insert_per_s": n / insert_s,
        "sqlite_vec_ms": vec_ms,
        "numpy_ms": np_ms,
        "ratio": vec_ms / np_ms,
        "recall": recall,
        "bytes_per_100k": size / n * 100_000,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=60, help="generated corpus files for the ingest part (0 skips it)")
    ap.add_argument("--words", type=int, default=500, help="words per generated file")
    ap.add_argument("--batch", type=int, default=64, help="embedding batch size")
    ap.add_argument("--rounds", type=int, default=2, help="ingest rounds (raw and store alternate; best of each)")
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated vector counts for KNN ('' skips it)")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("-k", type=int, default=10)
    args = ap.parse_args(argv)

    from preflexor_local.rag.db import driver_name

    print(f"driver: {driver_name()}   cores: {os.cpu_count()}", flush=True)
    # KNN first: once torch has run, its idle OpenMP threads slow numpy down and the baseline would be unfair
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if sizes:
        print(f"KNN: dim {args.dim}, k={args.k}, median of {args.queries} queries, random unit vectors, cosine", flush=True)
        print(f"  {'vectors':>9} {'insert/s':>10} {'sqlite-vec ms':>14} {'numpy ms':>9} {'ratio':>6} {'recall':>7} {'MiB/100k':>9}", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            for n in sizes:
                r = bench_knn(n, args.dim, args.queries, args.k, Path(tmp))
                print(
                    f"  {n:>9} {r['insert_per_s']:>10.0f} {r['sqlite_vec_ms']:>14.2f} {r['numpy_ms']:>9.2f} {r['ratio']:>6.1f} {r['recall']:>7.3f} {r['bytes_per_100k'] / 2**20:>9.1f}",
                    flush=True,
                )
    if args.files:
        r = bench_ingest(args.files, args.words, args.batch, args.rounds)
        print(
            f"ingest: {r['files']} files -> {r['chunks']} chunks (200 tokens, 32 overlap; chunking {r['chunking_s']:.2f} s), best of {args.rounds}\n"
            f"  raw SentenceTransformer.encode: {r['raw_encode_s']:.1f} s = {r['raw_chunks_per_s']:.1f} chunks/s\n"
            f"  index_folder (extract+chunk+embed+store): {r['store_s']:.1f} s = {r['store_chunks_per_s']:.1f} chunks/s\n"
            f"  ratio store/raw throughput: {r['ratio']:.2f}   re-run (all unchanged): {r['rerun_unchanged_s']:.2f} s\n"
            f"  store's own cost (index_folder minus time inside the model): {r['overhead_s']:.2f} s = {r['overhead_ms_per_chunk']:.2f} ms/chunk "
            f"({r['overhead_s'] / r['store_s'] * 100:.1f} % of the run)\n"
            f"  store size: {r['store_bytes'] / 2**20:.1f} MiB = {r['bytes_per_100k_chunks'] / 2**20:.0f} MiB per 100k chunks (text + metadata from dbstat, plus 4*dim bytes per vector)",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
