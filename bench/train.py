"""Benchmark: our TRL engine vs plain TRL on the same model and data; pair generation speed.

    python bench/train.py                      # tiny random Llama (built on the fly), 12 steps each
    python bench/train.py --model ./gemma-hf --steps 6
    python bench/train.py --gen-teacher model.gguf --gen-n 4

Each trainer runs in its own process (peak RSS is per process). Seconds per
step are the median of the steps after the first two (warm-up), as CPU time of
the process (wall time is printed too, but on a shared machine it measures the
neighbours); ``--repeat`` keeps each trainer's best run. "plain" is
TRL's own ORPOTrainer / DPOTrainer on the same rendered text with the same
LoRA config and hyper-parameters; "ours" is ``preflexor_local.train`` (our
tokenisation, masks, collator). Target: ours/plain <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds mlx.py and rag.py: keep them from shadowing the real packages
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _pairs(n: int):
    from train_fixtures import pair_rows

    from preflexor_local.train.data import pair_from_obj

    return [pair_from_obj(r, "bench", i + 1) for i, r in enumerate(pair_rows(n))]


def _timer():
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.cpu, self.t, self.c = [], [], None, None

        def on_step_begin(self, *a, **k):
            self.t, self.c = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self.t)
            self.cpu.append(time.process_time() - self.c)

    return Timer()


def run_one(kind: str, method: str, model: str, steps: int) -> dict:
    """One trainer in this process; returns its timings."""
    import torch

    from preflexor_local.train.config import TrainConfig

    torch.manual_seed(0)
    loss = "exo_pair" if method == "dpo" else None
    cfg = TrainConfig(
        model=model,
        output=tempfile.mkdtemp(),
        method=method,
        loss=loss,
        rank=8,
        steps_per_round=steps,
        batch_size=2,
        grad_accum=1,
        train_embeddings=False,
        mask_thinking=False,
    ).resolved()
    pairs = _pairs(8)
    timer = _timer()
    if kind == "ours":
        from preflexor_local.train import trl
        from preflexor_local.train.session import RunContext

        session = trl.open_session(cfg, RunContext(Path(cfg.output), quiet=True))
        # attach the timer to the trainer the session builds
        cls = trl.dpo_trainer_class() if method == "dpo" else trl.orpo_trainer_class()
        init = cls.__init__

        def patched(self, *a, **k):
            k["callbacks"] = [*k.get("callbacks", []), timer]
            init(self, *a, **k)

        cls.__init__ = patched
        session.train_round(pairs, steps, 0)
        cls.__init__ = init
    else:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from preflexor_local.train.data import render_pair
        from preflexor_local.train.encode import training_template
        from preflexor_local.train.trl import compat as trl_compat

        tok = AutoTokenizer.from_pretrained(model)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        mdl = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        template = training_template(cfg, tok, mdl.config.model_type, Path(model).name)
        rows = []
        for p in pairs:
            prompt, chosen, rejected = render_pair(template, p)
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
        ds = Dataset.from_list(rows)
        peft = LoraConfig(r=8, lora_alpha=8, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
        common = dict(
            output_dir=cfg.output,
            max_steps=steps,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            learning_rate=cfg.lr,
            lr_scheduler_type="constant",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            max_length=cfg.max_length,
            beta=cfg.beta,
            disable_tqdm=True,
        )
        if method == "dpo":
            DPOConfig, DPOTrainer, _ = trl_compat.dpo()
            args = DPOConfig(loss_type=["exo_pair"], label_smoothing=1e-3, **common)
            trainer = DPOTrainer(model=mdl, args=args, train_dataset=ds, processing_class=tok, peft_config=peft, callbacks=[timer])
        else:
            ORPOConfig, ORPOTrainer = trl_compat.orpo()
            from peft import get_peft_model

            trainer = ORPOTrainer(model=get_peft_model(mdl, peft), args=ORPOConfig(**common), train_dataset=ds, processing_class=tok, callbacks=[timer])
        trainer.train()
    times = timer.times[2:] or timer.times
    cpu = timer.cpu[2:] or timer.cpu
    return {
        "kind": kind,
        "method": method,
        "steps": len(timer.times),
        "s_per_step": statistics.median(times),
        "cpu_s_per_step": statistics.median(cpu),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def bench_generation(teacher: str, n: int) -> dict:
    from tiny_model import CORPUS

    from preflexor_local import backends
    from preflexor_local.config import LoadOptions
    from preflexor_local.train.config import GenerationConfig
    from preflexor_local.train.generate import PairGenerator, TextCorpus

    t = backends.load(teacher, LoadOptions(ctx=4096))
    gen = PairGenerator(
        t, TextCorpus(CORPUS), GenerationConfig(categories=("Reasoning Steps", "Hypothesis"), teacher_max_tokens=96, student_max_tokens=64), quiet=True
    )
    with tempfile.TemporaryDirectory() as d:
        report = gen.generate(n, Path(d) / "p.jsonl", student=t)
    t.close()
    return report.to_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF checkpoint (default: a tiny random Llama)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=1, help="runs per trainer (the best is kept)")
    ap.add_argument("--gen-teacher", help="teacher spec for the pairs-per-minute figure (a GGUF is fastest)")
    ap.add_argument("--gen-n", type=int, default=3)
    ap.add_argument("--only-gen", action="store_true", help="skip the trainer comparison")
    ap.add_argument("--one", nargs=2, metavar=("KIND", "METHOD"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(a.one[0], a.one[1], a.model, a.steps)))
        return
    model = a.model
    if model is None and not a.only_gen:
        from tiny_model import build_tiny_llama

        model = str(build_tiny_llama(Path(tempfile.mkdtemp()) / "tiny"))
    results = {}
    for method in () if a.only_gen else ("orpo", "dpo"):
        for kind in ("plain", "ours"):
            best = None
            for _ in range(a.repeat):
                out = subprocess.run(
                    [sys.executable, __file__, "--one", kind, method, "--model", model, "--steps", str(a.steps)],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")},
                )
                if out.returncode != 0:
                    sys.exit(out.stderr[-3000:])
                r = json.loads(out.stdout.strip().splitlines()[-1])
                best = r if best is None or r["cpu_s_per_step"] < best["cpu_s_per_step"] else best
            results[(kind, method)] = best
        o, p = results[("ours", method)], results[("plain", method)]
        print(
            f"{method:5s} plain {p['cpu_s_per_step']:.4f} cpu-s/step ({p['s_per_step']:.4f} wall) {p['peak_rss_mb']:.0f} MB | "
            f"ours {o['cpu_s_per_step']:.4f} cpu-s/step ({o['s_per_step']:.4f} wall) {o['peak_rss_mb']:.0f} MB | "
            f"ratio cpu time {o['cpu_s_per_step'] / p['cpu_s_per_step']:.3f} memory {o['peak_rss_mb'] / p['peak_rss_mb']:.3f}"
        )
    if a.gen_teacher:
        g = bench_generation(a.gen_teacher, a.gen_n)
        print(f"generation: {g['written']} pairs in {g['seconds']:.1f} s = {g['pairs_per_minute']} pairs/min (teacher = student = {a.gen_teacher})")


if __name__ == "__main__":
    main()
