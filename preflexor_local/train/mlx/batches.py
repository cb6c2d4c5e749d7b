"""Preference pairs -> token ids, labels and padded MLX batches.

Rendering and tokenisation are the shared core's (``train.encode.Encoder``:
``render_pair``, then prompt+reply tokenised together and split at the common
prefix with the prompt), and every label mask comes from
``train.masks.labels_for``, so both engines train on the same ids and score
the same positions.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..data import PreferencePair
from ..encode import Encoder
from ..masks import IGNORE, MaskRule, MaskStats, draw_rng, end_label_at, end_weight_rows, labels_for


@dataclass
class Example:
    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]
    line: int = 0
    chosen_end: int = -1  # masks.end_label_at: index in chosen_ids of the scored end-of-turn token (-1: none)


@dataclass
class Tokenized:
    examples: list[Example]
    dropped_long: int = 0
    truncated_rejected: int = 0
    stats: MaskStats = field(default_factory=MaskStats)


def tokenize_pairs(
    pairs: list[PreferencePair], tokenizer, template, rule: MaskRule, max_length: int, seed: int = 0, epoch: int = 0, sft: bool = False
) -> Tokenized:
    """Tokenise with the shared ``Encoder`` (the TRL engine's ids and length policy), then label with ``masks``.

    Length policy (shared): a pair whose prompt + chosen reply exceeds ``max_length`` is dropped and
    counted; a rejected reply that does not fit is cut at the end and counted. A partial thinking mask
    draws from ``draw_rng(seed, epoch, 2·row + side)`` (side 0 chosen, 1 rejected): reproducible, new each epoch.
    """
    enc = Encoder(tokenizer, template, max_length).encode(pairs)
    out = Tokenized([], dropped_long=enc.dropped_long, truncated_rejected=enc.truncated_rejected)
    for row in enc.rows:
        p = list(row["prompt_ids"])
        c, r = p + list(row["chosen_ids"]), p + list(row["rejected_ids"])
        cl = labels_for(c, len(p), rule, draw_rng(seed, epoch, 2 * row["row"]), out.stats)
        rl = labels_for(r, len(p), rule, draw_rng(seed, epoch, 2 * row["row"] + 1), None if sft else out.stats)
        line = pairs[row["row"]].line if row["row"] < len(pairs) else 0
        out.examples.append(Example(c, cl, r, rl, line, end_label_at(len(p), row["chosen_end"], cl)))
    return out


def pad_batch(examples: list[Example], pad_id: int, preference: bool = True):
    """(ids, labels, lengths) as MLX arrays: chosen rows, then rejected rows (when ``preference``), right-padded."""
    import mlx.core as mx

    seqs = [(e.chosen_ids, e.chosen_labels) for e in examples]
    if preference:
        seqs += [(e.rejected_ids, e.rejected_labels) for e in examples]
    width = max(len(ids) for ids, _ in seqs)
    ids = [list(i) + [pad_id] * (width - len(i)) for i, _ in seqs]
    labels = [list(lab) + [IGNORE] * (width - len(lab)) for _, lab in seqs]
    lengths = [len(i) for i, _ in seqs]
    return mx.array(ids), mx.array(labels), mx.array(lengths)


def end_weights(examples: list[Example], width: int, weight: float):
    """``masks.end_weight_rows`` of the chosen rows as an MLX array ``[B, width - 1]`` (None when ``weight`` is 1)."""
    rows = end_weight_rows([e.chosen_end for e in examples], width, weight)
    if rows is None:
        return None
    import mlx.core as mx

    return mx.array(rows)


def batches(examples: list[Example], batch_size: int, seed: int, epoch: int):
    """Shuffled (per epoch, reproducible) lists of ``batch_size`` examples; the last short batch is kept."""
    order = list(range(len(examples)))
    random.Random(f"{seed}:order:{epoch}").shuffle(order)
    for i in range(0, len(order), batch_size):
        yield [examples[j] for j in order[i : i + batch_size]]
