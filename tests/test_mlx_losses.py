"""The MLX objectives against TRL 1.16 on the same tiny model, weights, token ids and labels.

What is compared, exactly: one batch is tokenised and masked by the MLX engine
(``tokenize_pairs`` → ``train.masks.labels_for``, the shared mask function).
The same padded ids and labels go to

* TRL: ``DPOTrainer.compute_loss(model, {input_ids, attention_mask, completion_mask})``
  (``completion_mask`` = our scored positions), and the TRL engine's ORPO trainer
  (TRL's ``ORPOTrainer`` with the NLL over scored reply positions and the
  ``--end-weight`` weighting) ``get_batch_loss_metrics(model, {chosen_*, rejected_*})``, on the
  HF checkpoint with the adapter converted to PEFT (``convert/mlx_adapter.py``),
  the reference being TRL's own adapter-disabled model (``use_adapter(model, None)``;
  TRL's copy of a pre-trained adapter as "ref" is removed, since our adapter
  stands in for one being trained from zero);
* MLX: ``MLXTrainer.batch_loss`` on the MLX checkpoint of the same weights with
  the original MLX adapter (reference = adapters swapped out).

The adapter weights are random and non-zero, so policy and reference differ.
Both sides run in float32; tolerance: |Δloss| ≤ 2e-4 (observed 1e-6 to 1.2e-5).
"""

from __future__ import annotations

import pytest

pytest.importorskip("mlx_lm", reason="MLX is not installed on this platform (pip install 'preflexor-local[mlx]')")

from mlx_fixtures import *  # noqa: E402,F403
from mlx_fixtures import train_config  # noqa: E402

TOL = 2e-4

CASES = [
    # method, dpo loss, adapter, train tag rows, thinking mask, end-of-turn weight
    ("orpo", None, "lora", True, False, 1.0),
    ("orpo", None, "dora", False, True, 1.0),
    ("orpo", None, "lora", False, False, 6.0),
    ("dpo", "sigmoid", "lora", False, True, 1.0),
    ("dpo", "exo_pair", "dora", False, True, 1.0),  # tag rows: TRL 1.16's fused lm-head DPO forward cannot run PEFT trainable tokens
    ("dpo", "exo_pair", "lora", False, False, 1.0),
]


def _randomise(trainer, seed: int) -> None:
    import mlx.core as mx

    mx.random.seed(seed)
    new = []
    for k, v in trainer.trainable().items():
        if k.endswith("lora_b") or k.endswith("lora_a"):
            new.append((k, mx.random.normal(v.shape) * 0.2))
        elif k.endswith(".m"):
            new.append((k, v * (1 + 0.1 * mx.random.normal(v.shape))))
        elif k.endswith(".rows"):
            new.append((k, v + 0.3 * mx.random.normal(v.shape)))
    trainer.model.load_weights(new, strict=False)


@pytest.fixture(scope="module")
def hf_tok(tiny_llama):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama)


@pytest.mark.slow
@pytest.mark.parametrize("method,loss,adapter,rows,mask,end_weight", CASES)
def test_loss_matches_trl(method, loss, adapter, rows, mask, end_weight, tiny_mlx, tiny_llama, hf_tok, pairs, tmp_path):
    import numpy as np
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from preflexor_local.convert.mlx_adapter import MlxToPeftConfig, convert_mlx_adapter_to_peft
    from preflexor_local.train.mlx.batches import end_weights, pad_batch
    from preflexor_local.train.mlx.trainer import MLXTrainer

    extra = {"loss": loss, "label_smoothing": 5e-3 if loss == "exo_pair" else None} if method == "dpo" else {}
    cfg = train_config(
        tiny_mlx,
        tmp_path / "ad",
        method=method,
        adapter=adapter,
        train_embeddings=rows,
        mask_thinking=mask,
        beta=0.5 if method == "dpo" else 0.1,
        end_weight=end_weight,
        **extra,
    )
    trainer = MLXTrainer(cfg)
    _randomise(trainer, seed=len(tmp_path.name))
    ad = trainer.save_adapter(tmp_path / "ad")
    data = trainer.tokenize(pairs)
    assert len(data.examples) == 4 and (not mask or data.stats.ignored_thinking_tokens > 0)
    batch = pad_batch(data.examples, trainer.pad_id, preference=True)
    weights = end_weights(data.examples, batch[0].shape[1], end_weight)
    assert end_weight == 1.0 or all(e.chosen_end > 0 for e in data.examples)
    mlx_loss, mlx_metrics = trainer.batch_loss(batch, weights)

    peft_dir = convert_mlx_adapter_to_peft(MlxToPeftConfig(ad, tmp_path / "peft", base_model=tiny_llama, quiet=True))
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(peft_dir), is_trainable=True)
    ids, labels, lengths = (torch.tensor(np.array(a)).long() for a in batch)
    attention = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    rows_ds = Dataset.from_list([{"prompt": "q", "chosen": "a", "rejected": "b"}] * 2)
    common = dict(output_dir=str(tmp_path / "trl"), use_cpu=True, report_to=[], per_device_train_batch_size=2, beta=cfg.beta)
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        trl = DPOTrainer(
            model=model,
            args=DPOConfig(loss_type=[loss], label_smoothing=extra["label_smoothing"] or 0.0, max_length=None, **common),
            train_dataset=rows_ds,
            processing_class=hf_tok,
        )
        # TRL copies a pre-trained adapter into a "ref" adapter; our adapter stands in for a freshly trained one,
        # whose reference is the adapter-disabled model (TRL's ref_model=None path for a new adapter).
        model.delete_adapter("ref")
        assert "ref" not in model.peft_config
        with torch.no_grad():
            trl_loss = trl.compute_loss(model, {"input_ids": ids, "attention_mask": attention, "completion_mask": (labels != -100).long()})
    else:
        # The TRL engine's trainer: stock TRL's ORPO with the NLL over the scored reply positions only.
        from preflexor_local.train.trl import orpo_trainer_class
        from preflexor_local.train.trl.compat import orpo

        ids_ds = Dataset.from_list([{"prompt_ids": [1], "chosen_ids": [2], "rejected_ids": [3]}] * 2)
        trl = orpo_trainer_class()(model=model, args=orpo()[0](max_length=256, **common), train_dataset=ids_ds, processing_class=hf_tok)
        trl.end_weight = end_weight
        half = ids.shape[0] // 2
        tb = {
            "chosen_input_ids": ids[:half],
            "chosen_attention_mask": attention[:half],
            "chosen_labels": labels[:half],
            "rejected_input_ids": ids[half:],
            "rejected_attention_mask": attention[half:],
            "rejected_labels": labels[half:],
            "chosen_end_at": [e.chosen_end for e in data.examples],
        }
        with torch.no_grad():
            trl_loss, trl_metrics = trl.get_batch_loss_metrics(model, tb)
        assert abs(trl_metrics["nll_loss"] - mlx_metrics["nll_loss"]) <= TOL
        assert abs(trl_metrics["log_odds_ratio"] - mlx_metrics["log_odds_ratio"]) <= TOL
    assert abs(float(trl_loss) - mlx_loss) <= TOL, (float(trl_loss), mlx_loss)
    if method == "dpo":  # policy and reference really differ, so the comparison covers the reference pass
        assert abs(mlx_metrics["rewards/margins"]) > 1e-3
    trainer.close()


def test_dpo_formulas_at_known_points():
    """Closed forms at z = 0: sigmoid gives log 2; EXO gives ½(log ½ − log(1−ε)) + ½(log ½ − log ε)."""
    import math

    import mlx.core as mx

    from preflexor_local.train.mlx.losses import dpo_from_logps, log1mexp

    zero = mx.array([-3.0, -5.0])
    loss, _ = dpo_from_logps(zero, zero, zero, zero, 0.1, "sigmoid")
    assert abs(loss.item() - math.log(2)) < 1e-6
    eps = 1e-3
    loss, _ = dpo_from_logps(zero, zero, zero, zero, 0.1, "exo_pair", eps)
    want = 0.5 * (math.log(0.5) - math.log1p(-eps)) + 0.5 * (math.log(0.5) - math.log(eps))
    assert abs(loss.item() - want) < 1e-5
    x = mx.array([-1e-6, -0.3, -0.7, -5.0, -40.0])
    assert mx.allclose(log1mexp(x), mx.array([math.log(-math.expm1(v)) for v in x.tolist()]), rtol=1e-4).item()
    with pytest.raises(ValueError):
        dpo_from_logps(zero, zero, zero, zero, 0.1, "exo_pair", 0.0)
