"""Preference pairs -> token ids, labels and padded MLX batches.

Rendering is ``train.data.render_pair`` (the served prompt is the trained
prompt) and every label mask comes from ``train.masks.labels_for`` — the same
function the TRL engine calls — so both engines score the same positions.
Prompt and completion are tokenised separately and concatenated (TRL's
layout), so the prompt/completion boundary is exact.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..data import PreferencePair, render_pair
from ..masks import IGNORE, MaskRule, MaskStats, draw_rng, labels_for


@dataclass
class Example:
    chosen_ids: list[int]
    chosen_labels: list[int]
    rejected_ids: list[int]
    rejected_labels: list[int]
    line: int = 0


@dataclass
class Tokenized:
    examples: list[Example]
    dropped_long: int = 0
    stats: MaskStats = field(default_factory=MaskStats)


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt; BOS added only if the tokenizer adds one and the template did not write it."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    if bos is not None and tokenizer.bos_token and not text.startswith(tokenizer.bos_token):
        probe = tokenizer.encode("a", add_special_tokens=True)
        if probe and probe[0] == bos:
            ids = [bos, *ids]
    return ids


def tokenize_pairs(pairs: list[PreferencePair], tokenizer, template, rule: MaskRule, max_length: int,
                   partial_p: float = 1.0, seed: int = 0, epoch: int = 0, sft: bool = False) -> Tokenized:
    """Tokenise and mask every pair; a pair whose prompt + reply exceeds ``max_length`` is dropped (never cut)."""
    out = Tokenized([])
    for row, pair in enumerate(pairs):
        prompt, chosen, rejected = render_pair(template, pair)
        p = encode_prompt(tokenizer, prompt)
        c = p + tokenizer.encode(chosen, add_special_tokens=False)
        r = p + tokenizer.encode(rejected, add_special_tokens=False)
        if len(c) > max_length or (not sft and len(r) > max_length):
            out.dropped_long += 1
            continue
        rng = draw_rng(seed, epoch, row) if partial_p < 1.0 else None
        cl = labels_for(c, len(p), rule, rng, out.stats)
        rl = labels_for(r, len(p), rule, rng, None if sft else out.stats)
        out.examples.append(Example(c, cl, r, rl, pair.line))
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


def batches(examples: list[Example], batch_size: int, seed: int, epoch: int):
    """Shuffled (per epoch, reproducible) lists of ``batch_size`` examples; the last short batch is kept."""
    order = list(range(len(examples)))
    random.Random(f"{seed}:order:{epoch}").shuffle(order)
    for i in range(0, len(order), batch_size):
        yield [examples[j] for j in order[i : i + batch_size]]
