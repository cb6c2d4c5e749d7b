"""MLX training: loss goes down, only adapter parameters move, accumulation/checkpointing, tokens, save/resume,
adapter -> PEFT -> merged forward == MLX fused forward, the shared loop, and clear errors."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("mlx_lm", reason="MLX is not installed on this platform (pip install 'preflexor-local[mlx]')")

from mlx_fixtures import *  # noqa: E402,F403
from mlx_fixtures import PAIRS, train_config  # noqa: E402

from preflexor_local.errors import InvalidModelError, UsageError  # noqa: E402


def _params(model) -> dict:
    import numpy as np
    from mlx.utils import tree_flatten

    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


def _fixed_batch(trainer, pairs):
    from preflexor_local.train.mlx.batches import pad_batch

    return pad_batch(trainer.tokenize(pairs).examples, trainer.pad_id, preference=trainer.c.method != "sft")


@pytest.mark.slow
@pytest.mark.parametrize(
    "base,method,extra",
    [
        ("fp32", "orpo", {"adapter": "lora", "mask_thinking": True}),
        ("fp32", "dpo", {"adapter": "dora", "loss": "exo_pair"}),
        ("q4", "dpo", {"adapter": "lora", "loss": "sigmoid"}),  # QLoRA: LoRA on the 4-bit base
        ("q4", "sft", {"adapter": "dora"}),
        ("fp32", "sft", {"adapter": "lora", "end_weight": 5.0, "lr": 5e-3}),
    ],
)
def test_steps_lower_the_loss_and_move_only_the_adapter(base, method, extra, tiny_mlx, tiny_mlx_q4, pairs, tmp_path):
    import numpy as np

    from preflexor_local.train.mlx.batches import end_weights
    from preflexor_local.train.mlx.trainer import MLXTrainer

    model = tiny_mlx if base == "fp32" else tiny_mlx_q4
    extra = dict(extra)
    lr = extra.pop("lr", 5e-3 if method == "dpo" else 2e-2)
    t = MLXTrainer(train_config(model, tmp_path, method=method, lr=lr, batch_size=4, **extra))
    batch = _fixed_batch(t, pairs)
    weights = end_weights(t.tokenize(pairs).examples, batch[0].shape[1], t.c.end_weight)  # the objective it trains
    before_loss, _ = t.batch_loss(batch, weights)
    before = _params(t.model)
    trainable = set(t.trainable())
    summary = t.train_round(pairs, 6)
    after_loss, metrics = t.batch_loss(batch, weights)
    after = _params(t.model)
    assert after_loss < before_loss - 1e-3, (before_loss, after_loss)
    assert summary["steps"] == 6 and t.global_step == 6 and summary["pairs_used"] == 4
    moved = {k for k in before if not np.array_equal(before[k], after[k])}
    assert moved and moved <= trainable  # nothing outside the adapter changed
    assert any(k.endswith("lora_b") for k in moved)
    assert all(k.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "m", "rows") for k in trainable)
    if method == "dpo":
        assert metrics["rewards/margins"] > 0
    t.close()


@pytest.mark.slow
def test_accumulation_and_checkpointing_match_plain_steps(tiny_mlx, pairs, tmp_path):
    """2 micro-batches of 2 pairs accumulated == one batch of 4 (DPO sums per pair); checkpointing changes nothing."""
    import numpy as np

    from preflexor_local.train.mlx.trainer import MLXTrainer

    def run(**kw):
        t = MLXTrainer(train_config(tiny_mlx, tmp_path, method="dpo", loss="sigmoid", lr=1e-2, max_grad_norm=1e9, **kw))
        t.train_round(pairs, 2)
        p = {k: np.array(v) for k, v in t.trainable().items()}
        t.close()
        return p

    plain = run(batch_size=4, grad_accum=1)
    accum = run(batch_size=2, grad_accum=2)
    ckpt = run(batch_size=4, grad_accum=1, gradient_checkpointing=True)
    for k in plain:
        assert np.allclose(plain[k], accum[k], atol=2e-5), k
        assert np.allclose(plain[k], ckpt[k], atol=1e-6), k


@pytest.mark.slow
def test_save_load_resume_and_fuse(tiny_mlx, pairs, tmp_path):
    import numpy as np

    from preflexor_local.backends import GenerationRequest, load
    from preflexor_local.config import Sampling
    from preflexor_local.train.mlx.trainer import MLXTrainer
    from preflexor_local.train.session import RunContext

    greedy = Sampling(temperature=0.0, repeat_penalty=1.0, dry_multiplier=0.0, max_tokens=12)
    req = GenerationRequest(messages=[{"role": "user", "content": "Why is spider silk tough?"}], prefill="<|thinking|>", sampling=greedy)
    t = MLXTrainer(train_config(tiny_mlx, tmp_path / "run", method="orpo", lr=5e-2))
    t.train_round(pairs, 4)
    live = t.student().generate(req).text
    final = t.save_final(tmp_path / "run")
    ad = tmp_path / "run" / "adapter"
    cfg = json.loads((ad / "adapter_config.json").read_text())
    assert cfg["fine_tune_type"] == "lora" and cfg["lora_parameters"]["scale"] == 2.0 and (ad / "token_rows.safetensors").is_file()
    with load(str(ad)) as b:  # adapter dir resolves to the MLX backend, base from adapter_config
        assert b.describe()["adapter"] == str(ad) and b.generate(req).text == live
    with load(final["merged"]) as fused:  # the fused model answers like the adapter
        assert fused.generate(req).text == live
    t.save_checkpoint(tmp_path / "ckpt")
    trained = {k: np.array(v) for k, v in t.trainable().items()}
    t.close()
    r = MLXTrainer(train_config(tiny_mlx, tmp_path / "run2", method="orpo", lr=5e-2), RunContext(output=tmp_path / "run2", resume_from=tmp_path / "ckpt"))
    assert r.global_step == 4 and int(r.optimizer.state["step"]) == 4
    for k, v in r.trainable().items():
        assert np.array_equal(np.array(v), trained[k]), k
    r.close()


@pytest.mark.slow
def test_add_tokens_then_train_the_new_rows(tiny_mlx_notags, pairs, tmp_path):
    import numpy as np
    from mlx_lm.utils import load as mlx_load

    from preflexor_local.train.mlx import add_tokens
    from preflexor_local.train.mlx.trainer import MLXTrainer

    out = tmp_path / "with-tags"
    report = add_tokens(tiny_mlx_notags, out)
    assert len(report["added"]) == 4 and report["vocab_size"] == 404
    old, _ = mlx_load(str(tiny_mlx_notags))
    new, tok = mlx_load(str(out))
    ids = [report["ids"][t] for t in report["added"]]
    assert ids == [400, 401, 402, 403] and tok.encode("<|thinking|>x<|/thinking|>", add_special_tokens=False)[0] == 400
    w_old, w_new = np.array(old.model.embed_tokens.weight), np.array(new.model.embed_tokens.weight)
    assert np.array_equal(w_new[:400], w_old) and np.allclose(w_new[400:], w_old.mean(0), atol=1e-6)
    assert np.array(new.lm_head.weight).shape[0] == 404
    t = MLXTrainer(train_config(out, tmp_path / "run", method="orpo", lr=5e-2, train_embeddings=True, mask_thinking=True))
    assert t.row_ids == ids
    t.train_round(pairs, 3)
    rows = {k: np.array(v) for k, v in t.trainable().items() if k.endswith(".rows")}
    assert set(rows) == {"model.embed_tokens.rows", "lm_head.rows"}
    assert not np.allclose(rows["model.embed_tokens.rows"], w_new[400:])  # the new rows learned
    with pytest.raises(UsageError, match="already exists"):
        add_tokens(tiny_mlx_notags, out)
    t.close()
    # Training a model whose tags are split adds them first (like the TRL engine) and trains their rows.
    auto = MLXTrainer(train_config(tiny_mlx_notags, tmp_path / "auto", method="dpo", loss="sigmoid"))
    assert auto.base_path == (tmp_path / "auto" / "base-with-tags").resolve() and auto.row_ids == ids
    assert auto.adapter_config()["model"] == str(auto.base_path)
    auto.close()


@pytest.mark.slow
@pytest.mark.parametrize("adapter,rows", [("lora", True), ("dora", False)])
def test_adapter_to_peft_merged_equals_mlx_fused(adapter, rows, tiny_mlx, tiny_llama, pairs, tmp_path):
    """MLX adapter -> PEFT -> merge_and_unload (torch) gives the logits of the MLX fused model (|Δ| ≤ 1e-4)."""
    import mlx.core as mx
    import numpy as np
    import torch
    from mlx_lm.utils import load as mlx_load
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from preflexor_local.backends._mlx_adapters import apply_adapter
    from preflexor_local.convert.mlx_adapter import MlxToPeftConfig, convert_mlx_adapter_to_peft
    from preflexor_local.train.mlx.fuse import fuse_model
    from preflexor_local.train.mlx.trainer import MLXTrainer

    t = MLXTrainer(train_config(tiny_mlx, tmp_path, method="orpo", adapter=adapter, lr=5e-2, train_embeddings=rows, alpha=12))
    t.train_round(pairs, 4)
    ad = t.save_adapter(tmp_path / "ad")
    t.close()
    peft_dir = convert_mlx_adapter_to_peft(MlxToPeftConfig(ad, tmp_path / "peft", base_model=tiny_llama, quiet=True))
    pcfg = json.loads((peft_dir / "adapter_config.json").read_text())
    assert pcfg["r"] == 4 and pcfg["lora_alpha"] == 12 and pcfg["use_dora"] == (adapter == "dora")
    merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32), str(peft_dir)).merge_and_unload()
    ids = [[0, 3, 40, 50, 60, 7, 90, 120, 8, 200, 300, 6, 4, 7]]
    with torch.no_grad():
        want = merged(torch.tensor(ids)).logits.numpy()
    model, _ = mlx_load(str(tiny_mlx))
    apply_adapter(model, ad)
    fuse_model(model)
    got = np.array(model(mx.array(ids)))
    base, _ = mlx_load(str(tiny_mlx))
    assert np.abs(np.array(base(mx.array(ids))) - want).max() > 1e-2  # the adapter matters
    assert np.abs(got - want).max() <= 1e-4


def test_converter_refuses_by_name(tiny_mlx, tiny_llama, pairs, tmp_path):
    from click.testing import CliRunner

    from preflexor_local.convert.mlx_adapter import MlxToPeftConfig, command, convert_mlx_adapter_to_peft
    from preflexor_local.train.mlx.trainer import MLXTrainer

    t = MLXTrainer(train_config(tiny_mlx, tmp_path, method="sft", train_embeddings=False))
    ad = t.save_adapter(tmp_path / "ad")
    t.close()
    cfg = json.loads((ad / "adapter_config.json").read_text())

    def variant(name, **changes):
        import shutil

        d = tmp_path / name
        shutil.copytree(ad, d)
        (d / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))
        return d

    cases = {
        "full": (variant("full", fine_tune_type="full"), "fine_tune_type 'full'"),
        "unknown": (variant("unknown", use_magic=True), "unknown adapter_config keys use_magic"),
        "lora-keys": (variant("lkeys", lora_parameters={**cfg["lora_parameters"], "rslora": True}), "unknown lora_parameters rslora"),
        "dora-claim": (variant("dclaim", fine_tune_type="dora"), "magnitude vector"),
    }
    for name, (path, message) in cases.items():
        with pytest.raises(InvalidModelError, match=message):
            convert_mlx_adapter_to_peft(MlxToPeftConfig(path, tmp_path / f"out-{name}", quiet=True))
    with pytest.raises(InvalidModelError, match="not an MLX adapter"):
        convert_mlx_adapter_to_peft(MlxToPeftConfig(tmp_path, tmp_path / "o", quiet=True))
    with pytest.raises(InvalidModelError, match="expects"):  # a base with other shapes is refused before writing
        convert_mlx_adapter_to_peft(MlxToPeftConfig(ad, tmp_path / "o2", base_model=_other_base(tmp_path), quiet=True))
    # An adapter_config as mlx_lm.lora writes it (its whole training config) is accepted.
    from mlx_lm.lora import CONFIG_DEFAULTS

    mlx_lm_style = variant(
        "mlx-lm-style",
        **{**CONFIG_DEFAULTS, "model": cfg["model"], "lora_parameters": cfg["lora_parameters"], "num_layers": -1, "fine_tune_type": "lora", "preflexor": None},
    )
    assert (convert_mlx_adapter_to_peft(MlxToPeftConfig(mlx_lm_style, tmp_path / "from-mlx-lm", quiet=True)) / "adapter_model.safetensors").is_file()
    res = CliRunner().invoke(command, [str(ad), "-o", str(tmp_path / "cli"), "--base-model", str(tiny_llama), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["config"]["peft_type"] == "LORA"
    res = CliRunner().invoke(command, [str(ad), "-o", str(tmp_path / "cli")])
    assert res.exit_code != 0 and "already exists" in str(res.exception)


def _other_base(tmp_path):
    from tiny_model import build_tiny_llama

    return build_tiny_llama(tmp_path / "wider", hidden=128)


def test_bad_training_inputs(tiny_mlx, tmp_path):
    from preflexor_local.train.mlx.trainer import MLXTrainer

    with pytest.raises(UsageError, match="exo_pair"):
        MLXTrainer(train_config(tiny_mlx, tmp_path, method="dpo", loss="ipo"))
    with pytest.raises(UsageError, match="adapters only"):
        MLXTrainer(train_config(tiny_mlx, tmp_path, method="orpo", adapter="none"))
    with pytest.raises(UsageError, match="no_proj"):
        MLXTrainer(train_config(tiny_mlx, tmp_path, method="orpo", target_modules="q_proj,no_proj"))
    with pytest.raises(Exception, match="config.json"):
        MLXTrainer(train_config(tmp_path, tmp_path / "o", method="orpo"))
    t = MLXTrainer(train_config(tiny_mlx, tmp_path, method="orpo", max_length=16))
    from preflexor_local.train.data import pair_from_obj

    with pytest.raises(UsageError, match="max-length"):
        t.train_round([pair_from_obj(p) for p in PAIRS], 1)
    t.close()


@pytest.mark.slow
def test_shared_loop_runs_the_mlx_engine(tiny_mlx, tmp_path):
    """`train orpo --engine mlx --data pairs.jsonl` through the shared loop: rounds, metrics, adapter + merged."""
    from preflexor_local.train.run import train

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    cfg = train_config(tiny_mlx, tmp_path / "out", method="orpo", engine="mlx", data=str(data), rounds=2, steps_per_round=2, mask_thinking=True)
    result = train(cfg, quiet=True)
    out = tmp_path / "out"
    assert result.rounds_done == 2 and result.global_step == 4
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["type"] == "step"] == [1, 2, 3, 4]
    assert (out / "adapter" / "adapters.safetensors").is_file() and (out / "merged" / "model.safetensors").is_file()
    assert (out / "rounds" / "round-0001" / "state.json").is_file()


def test_partial_thinking_mask_is_redrawn_each_epoch(tiny_mlx, pairs, tmp_path):
    from preflexor_local.train.mlx.trainer import MLXTrainer

    t = MLXTrainer(train_config(tiny_mlx, tmp_path, method="dpo", loss="sigmoid", partial_mask_p=0.5))
    first = [e.chosen_labels for e in t.tokenize(pairs).examples]
    assert first == [e.chosen_labels for e in t.tokenize(pairs).examples]  # reproducible within an epoch
    t.epoch += 1
    second = [e.chosen_labels for e in t.tokenize(pairs).examples]
    assert first != second
    ignored = [sum(1 for x in lab if x == -100) for lab in first]
    full = [
        sum(1 for x in e.chosen_labels if x == -100)
        for e in MLXTrainer(train_config(tiny_mlx, tmp_path, method="dpo", loss="sigmoid")).tokenize(pairs).examples
    ]
    assert all(i < f for i, f in zip(ignored, full))  # only part of the thinking is masked
    t.close()
