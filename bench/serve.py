"""`preflexor-local serve` against llama-cpp-python's own OpenAI server, on the same GGUF and settings.

Both servers run as subprocesses on loopback with the same model file (and LoRA
adapter, if the model has one), context, threads and greedy sampling, one at a
time. llama-cpp-python's server cannot run our rounds, so it is given the same
work: the bench first records, in-process, every model call one request makes
(rendered prompt, stop strings, token limit), and then replays those prompts
through its ``/v1/completions`` as one client "request" (greedy, so it generates
the same tokens). Ours runs with ``--parallel`` (default 4: concurrent requests
decoded in one batch); llama-cpp-python's server runs one request at a time. For
1, 2 and 4 concurrent clients (``--clients``) it reports:

* time to the first reasoning delta (ours: the first model token of the
  thinking, not the round label; theirs: the first token of the first call),
* time to the first answer delta (theirs: the first token of the answer call)
  and to the complete final answer ([DONE] of the last call),
* generated tokens per second: every completion token of every call over the
  wall time (ours: ``usage``; theirs: the same calls' recorded counts), and the
  median rate after a request's first token.

Ratio = ours / theirs for throughput (target >= 0.95 for one client with
rounds=1; >= 1.5 at 4 clients) and theirs / ours for times: >= 1 means at least as fast.

    python bench/serve.py [--model default] [--rounds 1] [--max-tokens 64] [--repeats 3] [--threads N] [--parallel 4] [--clients 1,2,4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from servers import start_serve, wait_up

QUESTIONS = [
    "Why is spider silk so tough?",
    "How does bone stop cracks?",
    "Why is nacre tough?",
    "What makes wood strong?",
    "Why do seashells resist breaking?",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_and_record(model: str, args) -> tuple[Path, list[str], dict[str, list[dict]]]:
    """The GGUF and LoRA adapters that `--model` loads, and every call our engine makes for each question."""
    from preflexor_local.backends import Backend, load
    from preflexor_local.config import LoadOptions, Recursion, Sampling
    from preflexor_local.reasoning.engine import Engine

    backend = load(None if model == "default" else model, LoadOptions(ctx=args.ctx, threads=args.threads))
    calls: list[dict] = []

    class Recording(Backend):
        kind = "recording"

        def __init__(self, inner):
            super().__init__(inner.name)
            self.inner, self.template = inner, inner.template

        def stream(self, request):
            call = {"prompt": self.inner.render(request), "stop": [*request.stop, *self.inner.template.stop], "max_tokens": request.limit}
            calls.append(call)
            for item in self.inner.stream(request):
                if not isinstance(item, str):
                    call["tokens"] = item.completion_tokens
                yield item

    try:
        d = backend.describe()
        if d.get("backend") != "llamacpp":
            sys.exit("bench/serve.py compares against llama-cpp-python's server: --model must be a GGUF")
        sampling = Sampling(temperature=0, repeat_penalty=1.0, dry_multiplier=0.0, max_tokens=args.max_tokens, stop_repeats=False)
        recorded = {}
        for q in QUESTIONS:
            calls.clear()
            Engine(Recording(backend), sampling=sampling, recursion=Recursion(rounds=args.rounds)).run(q)
            recorded[q] = list(calls)
        return Path(d["path"]), [a["path"] for a in d.get("adapters", [])], recorded
    finally:
        backend.close()


def start_ours(model: str, args, workdir: Path) -> tuple[subprocess.Popen, str]:
    flags = ["--model", model, "--ctx", str(args.ctx), "--threads", str(args.threads), "--temperature", "0", "--repeat-penalty", "1.0"]
    flags += ["--max-tokens", str(args.max_tokens), "--no-stop-repeats", "--recursive", str(args.rounds), "--max-queue", "8", "--parallel", str(args.parallel)]
    return start_serve(flags, workdir / "ours.log")


def start_theirs(gguf: Path, adapters: list[str], args, workdir: Path) -> tuple[subprocess.Popen, str]:
    if len(adapters) > 1:
        sys.exit("llama_cpp.server takes one LoRA adapter; this model has several")
    log, port = workdir / "theirs.log", free_port()
    cmd = [
        sys.executable,
        "-m",
        "preflexor_local.backends.llamacpp_load",  # llama_cpp.server, under the same AMX verdict as ours
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(args.ctx),
        "--n_threads",
        str(args.threads),
        "--n_threads_batch",
        str(args.threads),
        "--interrupt_requests",
        "False",
        "--model_alias",
        "raw",
    ]
    if adapters:
        cmd += ["--lora_path", adapters[0]]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    wait_up(url, proc, log)
    return proc, url


def ours_request(url: str, question: str, max_tokens: int) -> dict:
    body = {
        "model": "preflexor",
        "messages": [{"role": "user", "content": question}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    t0 = time.perf_counter()
    first_reasoning = first_answer = None
    tokens = 0
    with httpx.stream("POST", url + "/chat/completions", json=body, timeout=600) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if not chunk.get("choices"):
                continue
            delta, now = chunk["choices"][0].get("delta", {}), time.perf_counter() - t0
            text = delta.get("reasoning_content")
            if first_reasoning is None and text and not text.lstrip("\n").startswith("[round"):
                first_reasoning = now
            if first_answer is None and delta.get("content"):
                first_answer = now
    return _result(t0, first_reasoning, first_answer, tokens)


def theirs_request(url: str, calls: list[dict]) -> dict:
    """The same calls, replayed one after another through the raw server's /v1/completions."""
    t0 = time.perf_counter()
    first_reasoning = first_answer = None
    tokens = 0
    for i, call in enumerate(calls):
        body = {
            "model": "raw",
            "prompt": call["prompt"],
            "max_tokens": call["max_tokens"],
            "temperature": 0,
            "repeat_penalty": 1.0,
            "stop": call["stop"] or None,
            "stream": True,
        }
        with httpx.stream("POST", url + "/completions", json=body, timeout=600) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if not line.startswith("data: {"):
                    continue
                choice = json.loads(line[6:])["choices"][0]
                if not choice.get("text"):
                    continue
                now = time.perf_counter() - t0
                if first_reasoning is None:
                    first_reasoning = now
                if i == len(calls) - 1 and first_answer is None:
                    first_answer = now
        # Greedy on the same prompt generates the same tokens as our call did; its stream may merge several
        # tokens into one chunk (text held back near a stop string), so the recorded count is the exact one.
        tokens += call["tokens"]
    return _result(t0, first_reasoning, first_answer, tokens)


def _result(t0: float, first_reasoning, first_answer, tokens: int) -> dict:
    total = time.perf_counter() - t0
    after = total - (first_reasoning if first_reasoning is not None else total)
    return {
        "ttf_reasoning": first_reasoning,
        "ttf_answer": first_answer,
        "total": total,
        "tokens": tokens,
        "decode_tok_s": (tokens - 1) / after if after > 0 and tokens > 1 else None,
    }


def run(request, clients: int, repeats: int) -> dict:
    """``request(question) -> result`` from ``clients`` threads at once, ``repeats`` times each."""
    results, t0 = [], time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for r in range(repeats):
            qs = [QUESTIONS[(r * clients + i) % len(QUESTIONS)] for i in range(clients)]
            results += list(pool.map(request, qs))
    wall = time.perf_counter() - t0

    def med(key):
        vals = [x[key] for x in results if x[key] is not None]
        return statistics.median(vals) if vals else float("nan")

    tokens = sum(x["tokens"] for x in results)
    return {
        "ttf_reasoning": med("ttf_reasoning"),
        "ttf_answer": med("ttf_answer"),
        "total": med("total"),
        "tok_s": tokens / wall,
        "decode_tok_s": med("decode_tok_s"),
        "tokens": tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="a GGUF spec (default: the embedded default model)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--parallel", type=int, default=4, help="our server's --parallel (requests decoded in one batch)")
    ap.add_argument("--clients", default="1,2,4", help="comma list of concurrent client counts")
    from preflexor_local.backends.llamacpp import default_threads

    ap.add_argument("--threads", type=int, default=default_threads())
    args = ap.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]

    gguf, adapters, recorded = resolve_and_record(args.model, args)
    print(
        f"model {gguf}{' + ' + ', '.join(adapters) if adapters else ''} · ctx {args.ctx} · threads {args.threads} · "
        f"greedy · max_tokens {args.max_tokens} per call · rounds {args.rounds} · {args.repeats} repeats · "
        f"{statistics.mean(len(c) for c in recorded.values()):.1f} calls per request",
        flush=True,
    )
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("theirs", "ours"):  # one server at a time: they would compete for the same cores
            if name == "ours":
                proc, url = start_ours(args.model, args, Path(tmp))
                request = lambda q, url=url: ours_request(url, q, args.max_tokens)  # noqa: E731
            else:
                proc, url = start_theirs(gguf, adapters, args, Path(tmp))
                request = lambda q, url=url: theirs_request(url, recorded[q])  # noqa: E731
            try:
                request(QUESTIONS[-1])  # warm-up: page the weights in
                for clients in client_counts:
                    rows[(name, clients)] = run(request, clients, args.repeats)
            finally:
                proc.terminate()
                proc.wait(timeout=60)

    print(f"\n{'':30}{'preflexor serve':>16}{'llama_cpp.server':>18}{'ratio':>8}   (ours: --parallel {args.parallel})")
    for clients in client_counts:
        o, t = rows[("ours", clients)], rows[("theirs", clients)]
        print(f"{clients} client{'s' if clients > 1 else ''}:")
        for key, label, unit, better_high in (
            ("ttf_reasoning", "time to first reasoning delta", "s", False),
            ("ttf_answer", "time to first answer delta", "s", False),
            ("total", "time to complete answer", "s", False),
            ("tok_s", "generated tok/s (end to end)", "", True),
            ("decode_tok_s", "tok/s after the first token", "", True),
        ):
            ratio = (o[key] / t[key] if better_high else t[key] / o[key]) if o[key] and t[key] else float("nan")
            print(f"  {label:28}{o[key]:>14.3f}{unit:2}{t[key]:>16.3f}{unit:2}{ratio:>8.2f}")
        print(f"  {'tokens generated':28}{o['tokens']:>14d}  {t['tokens']:>16d}")
    print("\nratio: ours/theirs for tok/s, theirs/ours for times (>= 1 means at least as fast)")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
