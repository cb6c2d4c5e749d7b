"""The issue's "done when": HF -> MLX -> ORPO with masked thinking on MLX -> adapter -> PEFT -> merged -> GGUF -> ask."""

from __future__ import annotations

import json

import pytest
from train_fixtures import fast_generation, one_step_phases

pytest.importorskip("mlx_lm", reason="MLX is not installed on this platform (pip install 'preflexor-local[mlx]')")

from mlx_fixtures import *  # noqa: E402,F403
from mlx_fixtures import PAIRS  # noqa: E402

pytestmark = pytest.mark.slow  # every test here runs a whole pipeline (train, merge, convert, ask)


def test_hf_mlx_orpo_peft_merged_gguf_ask(tiny_llama, tiny_mlx, tmp_path):
    import shutil
    import subprocess
    import sys

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from preflexor_local.backends import GenerationRequest, load
    from preflexor_local.config import Sampling
    from preflexor_local.convert.hf_to_gguf import convert_to_gguf

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    cli = [sys.executable, "-m", "preflexor_local.app.cli"]

    def run(*args):
        r = subprocess.run([*cli, *map(str, args)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        return r

    run(
        "train",
        "orpo",
        "--engine",
        "mlx",
        "--model",
        tiny_mlx,
        "--data",
        data,
        "-o",
        tmp_path / "run",
        "--mask-thinking",
        "--steps-per-round",
        4,
        "--lr",
        5e-2,
        "--rank",
        4,
        "--alpha",
        8,
        "--lora-dropout",
        0,
        "--batch-size",
        2,
        "--freeze-embeddings",
        "--no-merge",
        "--json",
    )
    rounds = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in rounds if r["type"] == "round"][0]["ignored_thinking_tokens"] > 0  # the thinking really was masked
    adapter = tmp_path / "run" / "adapter"
    run("convert", "mlx-adapter-to-peft", adapter, "-o", tmp_path / "peft", "--base-model", tiny_llama, "-q")
    peft_dir = tmp_path / "peft"
    merged_dir = tmp_path / "merged"
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), str(peft_dir)).merge_and_unload()
    merged.save_pretrained(merged_dir)
    for f in tiny_llama.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja") or f.name == "special_tokens_map.json":
            shutil.copy(f, merged_dir / f.name)
    gguf = tmp_path / "tiny-orpo.gguf"
    convert_to_gguf(merged_dir, gguf, "f32", quiet=True)

    greedy = Sampling(temperature=0.0, repeat_penalty=1.0, dry_multiplier=0.0, max_tokens=12)
    req = GenerationRequest(messages=[{"role": "user", "content": "Why is spider silk tough?"}], prefill="<|thinking|>", sampling=greedy)
    with load(str(adapter)) as mlx_b, load(str(gguf)) as gguf_b:
        assert (mlx_b.kind, gguf_b.kind) == ("mlx", "llamacpp")
        assert gguf_b.generate(req).text == mlx_b.generate(req).text  # same trained model in both engines

    res = run("ask", "Why is spider silk tough?", "--model", gguf, "--json", "-t", 0, "--max-tokens", 12, "--repeat-penalty", 1.0)
    assert json.loads(res.stdout)


def test_train_preflexor_on_mlx_runs_both_phases(tiny_mlx, tmp_path, capsys):
    """Issue 9, defect 2: Phase II is handed the Phase I run folder; on MLX too it means that run's merged model."""
    from tiny_model import CORPUS

    from preflexor_local.app.cli import main

    (tmp_path / "c.txt").write_text("\n\n".join(CORPUS))
    out = tmp_path / "run"
    argv = [
        "train",
        "preflexor",
        "--engine",
        "mlx",
        "--model",
        str(tiny_mlx),
        "--store",
        str(tmp_path / "c.txt"),
        "--teacher",
        str(tiny_mlx),
        *one_step_phases(1, 1),
        *fast_generation(10, 8),
        "--rank",
        "4",
        "--grad-accum",
        "1",
        "--max-length",
        "512",
        "-o",
        str(out),
        "--json",
    ]
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert code in (0, None), captured.err[-2000:]
    result = json.loads(captured.out.strip().splitlines()[-1])
    assert result["phase1"]["rounds_done"] == 1 and result["phase2"]["rounds_done"] == 1
    phase2 = json.loads((out / "phase2" / "adapter" / "adapter_config.json").read_text())
    assert phase2["model"] == str((out / "phase1" / "merged").resolve())  # Phase II trained on the merged Phase I model
    assert (out / "phase2" / "merged" / "config.json").is_file()
