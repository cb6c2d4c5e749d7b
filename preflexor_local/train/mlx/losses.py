"""Training objectives in MLX, written to give the same numbers as TRL 1.16 on the same batch.

A batch holds ``2B`` right-padded sequences, chosen rows first, then rejected
rows (TRL's concatenated layout). ``labels`` are the input ids with ignored
positions set to -100 (``preflexor_local.train.masks``); ``lengths`` are the
unpadded lengths. Position ``t`` predicts token ``t + 1``.

* **SFT**: mean cross-entropy over every scored label position of the batch.
* **ORPO** (the TRL engine's ``PreflexorORPOTrainer``, TRL 1.16's formula):
  ``ℓ = mean log p`` over the scored positions of each sequence;
  ``log_odds = (ℓ_c − ℓ_r) − (log(1 − e^{ℓ_c}) − log(1 − e^{ℓ_r}))``;
  ``L = NLL_chosen − β · mean(log σ(log_odds))``, where the NLL is the mean
  cross-entropy over the **scored reply positions of the chosen rows** (as the
  ORPO paper defines it; stock TRL scores the prompt too, which teaches a model
  to write prompts).
* ``weights`` (chosen rows, ``[B, T-1]``, from ``batches.end_weights``) make
  either NLL a weighted mean: ``--end-weight`` on the end-of-turn label.
* **DPO** (TRL ``DPOTrainer._compute_loss``): ``π`` = **summed** log-probs over
  scored positions, ``z = (π_c − π_r) − (ref_c − ref_r)``;
  ``sigmoid``: ``−(1 − ε) log σ(βz) − ε log σ(−βz)`` (TRL's ``sigmoid`` is the
  ε = 0 case, the default here; ε > 0 is TRL's ``robust``-free conservative DPO);
  ``exo_pair``: ``σ(βz)[log σ(βz) − log(1 − ε)] + σ(−βz)[log σ(−βz) − log ε]``.
  Both are averaged over the batch.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

IGNORE = -100


def token_logps(model: nn.Module, ids: mx.array) -> mx.array:
    """log p(ids[:, t+1] | ids[:, :t+1]) for every t: shape [N, T-1], float32."""
    logits = model(ids[:, :-1]).astype(mx.float32)
    targets = ids[:, 1:]
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return picked - mx.logsumexp(logits, axis=-1)


def scored(labels: mx.array) -> mx.array:
    """[N, T-1] float mask of the positions whose next token is scored."""
    return (labels[:, 1:] != IGNORE).astype(mx.float32)


def sequence_logps(model: nn.Module, ids: mx.array, labels: mx.array, average: bool = False) -> tuple[mx.array, mx.array]:
    """(per-sequence summed or averaged log-probs over scored positions, per-token log-probs)."""
    lp = token_logps(model, ids)
    mask = scored(labels)
    total = (lp * mask).sum(-1)
    if average:
        total = total / mx.maximum(mask.sum(-1), 1.0)
    return total, lp


def log1mexp(x: mx.array) -> mx.array:
    """log(1 − e^x) for x < 0, stable on both sides of −ln 2 (TRL's branch point)."""
    t = -math.log(2.0)
    return mx.where(x < t, mx.log1p(-mx.exp(x)), mx.log(-mx.expm1(x)))


def _nll(lp: mx.array, mask: mx.array, weights: mx.array | None) -> mx.array:
    w = mask if weights is None else mask * weights
    return -(lp * w).sum() / mx.maximum(w.sum(), 1.0)


def sft_loss(model: nn.Module, ids: mx.array, labels: mx.array, lengths: mx.array, weights: mx.array | None = None) -> tuple[mx.array, dict]:
    lp = token_logps(model, ids)
    mask = scored(labels)
    loss = _nll(lp, mask, weights)
    return loss, {"nll_loss": loss, "tokens": mask.sum()}


def orpo_loss(model: nn.Module, ids: mx.array, labels: mx.array, lengths: mx.array, beta: float, weights: mx.array | None = None) -> tuple[mx.array, dict]:
    half = ids.shape[0] // 2
    lp = token_logps(model, ids)
    mask = scored(labels)
    avg = (lp * mask).sum(-1) / mx.maximum(mask.sum(-1), 1.0)
    chosen, rejected = avg[:half], avg[half:]
    nll = _nll(lp[:half], mask[:half], weights)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))
    ratio = nn.log_sigmoid(log_odds)
    loss = nll - beta * ratio.mean()
    return loss, {
        "nll_loss": nll,
        "log_odds_ratio": ratio.mean(),
        "log_odds_chosen": log_odds.mean(),
        "logps/chosen": chosen.mean(),
        "logps/rejected": rejected.mean(),
        "rewards/chosen": beta * chosen.mean(),
        "rewards/rejected": beta * rejected.mean(),
        "rewards/margins": beta * (chosen - rejected).mean(),
        "rewards/accuracies": (chosen > rejected).astype(mx.float32).mean(),
        "tokens": mask.sum(),
    }


def dpo_from_logps(
    chosen: mx.array, rejected: mx.array, ref_chosen: mx.array, ref_rejected: mx.array, beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0
) -> tuple[mx.array, dict]:
    z = (chosen - ref_chosen) - (rejected - ref_rejected)
    bz = beta * z
    if loss_type == "sigmoid":
        per = -(1 - label_smoothing) * nn.log_sigmoid(bz) - label_smoothing * nn.log_sigmoid(-bz)
    elif loss_type == "exo_pair":
        if not 0.0 < label_smoothing < 1.0:
            raise ValueError("exo_pair needs 0 < label_smoothing < 1")
        per = mx.sigmoid(bz) * (nn.log_sigmoid(bz) - math.log1p(-label_smoothing)) + mx.sigmoid(-bz) * (nn.log_sigmoid(-bz) - math.log(label_smoothing))
    else:
        raise ValueError(f"unsupported DPO loss {loss_type!r} on the MLX engine (sigmoid, exo_pair)")
    reward_c = beta * (chosen - ref_chosen)
    reward_r = beta * (rejected - ref_rejected)
    return per.mean(), {
        "rewards/chosen": reward_c.mean(),
        "rewards/rejected": reward_r.mean(),
        "rewards/margins": (reward_c - reward_r).mean(),
        "rewards/accuracies": (reward_c > reward_r).astype(mx.float32).mean(),
        "logps/chosen": chosen.mean(),
        "logps/rejected": rejected.mean(),
    }


def dpo_loss(
    model: nn.Module,
    ids: mx.array,
    labels: mx.array,
    lengths: mx.array,
    ref_logps: mx.array,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[mx.array, dict]:
    """``ref_logps``: the reference model's summed log-probs of the same rows, computed once per batch."""
    half = ids.shape[0] // 2
    logps, _ = sequence_logps(model, ids, labels)
    loss, metrics = dpo_from_logps(logps[:half], logps[half:], ref_logps[:half], ref_logps[half:], beta, loss_type, label_smoothing)
    metrics["tokens"] = scored(labels).sum()
    return loss, metrics
