"""Which label positions a loss ignores: the one mask function of the project.

Both trainers (TRL here, MLX in ``engines/mlx.py``) call this module, from token
ids only (plain lists of ints, no torch), so the two can never disagree.

A training sequence is ``prompt_ids + completion_ids``. Positions are scored
(contribute to the loss) or ignored (label ``IGNORE`` = -100):

1. **Completion only.** Prompt positions are always ignored.
2. **Thinking mask** (``MaskRule.mask_thinking``; PRefLexOR Phase II, "dynamic
   answer comparison"). Let ``e`` be the position of the **last** closing
   thinking tag inside the completion. Every completion position before ``e``
   is ignored; the tag itself is scored when ``keep_close_tag`` (the published
   setting) and ignored otherwise. The tag is a token sequence: one id when the
   tags are special tokens, several when they stay plain text (a LoRA adapter
   for a model whose vocabulary lacks them); all of its tokens count as "the
   tag". What follows (the answer, end-of-turn) is
   scored. The ignored tokens stay in the input: the thinking still conditions
   the answer, it is only not scored.
3. **Partial thinking mask** (``partial_p`` in (0, 1)). Instead of all of the
   thinking region of rule 2, a random ``floor(p * n)`` of its ``n`` positions
   are ignored. The draw uses the ``random.Random`` passed in; use
   ``draw_rng(seed, epoch, row)`` to get a fresh, reproducible draw each epoch
   (the reference drew once per dataset build).
4. **No closing tag in the completion** (truncated output, or a student that
   never closed its thinking). ``on_missing_close`` states the rule:
   ``"score"`` (default): the whole completion is scored, exactly as rule 1 —
   an unclosed section is then judged as the answer it became;
   ``"ignore"``: the whole completion is ignored (the sequence contributes
   nothing). Either way it is counted in ``MaskStats.missing_close``.

Positions of padding are the caller's business (pass unpadded ids).

5. **End-of-turn weight** (``--end-weight``, ORPO and SFT). The chosen reply's
   first end-of-turn token (``Encoder``'s ``chosen_end``), when scored, counts
   ``weight`` times in the NLL: ``end_label_at`` finds it, ``end_weight_rows``
   lays the weights out over next-token targets for either engine's tensors.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

IGNORE = -100
MISSING_CLOSE_RULES = ("score", "ignore")


@dataclass(frozen=True)
class MaskRule:
    """How labels are masked beyond the prompt. ``close_ids`` is the closing thinking tag as token ids."""

    mask_thinking: bool = False
    close_ids: tuple[int, ...] = ()
    keep_close_tag: bool = True
    partial_p: float = 1.0  # fraction of the thinking region ignored; 1.0 = all of it
    on_missing_close: str = "score"

    def __post_init__(self) -> None:
        from ..errors import UsageError

        if self.mask_thinking and not self.close_ids:
            raise UsageError("thinking mask needs the token ids of the closing thinking tag")
        if not 0.0 <= self.partial_p <= 1.0:
            raise UsageError(f"partial mask fraction must be within 0..1, got {self.partial_p}")
        if self.on_missing_close not in MISSING_CLOSE_RULES:
            raise UsageError(
                f"unknown rule {self.on_missing_close!r} for a completion without the closing tag", hint=f"use one of: {', '.join(MISSING_CLOSE_RULES)}"
            )


@dataclass
class MaskStats:
    """Counts over every sequence masked with one stats object."""

    sequences: int = 0
    scored_tokens: int = 0
    ignored_thinking_tokens: int = 0
    missing_close: int = 0
    details: list[str] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict:
        return {
            "sequences": self.sequences,
            "scored_tokens": self.scored_tokens,
            "ignored_thinking_tokens": self.ignored_thinking_tokens,
            "missing_close": self.missing_close,
        }


def draw_rng(seed: int, epoch: int, row: int) -> random.Random:
    """A reproducible random source for one row in one epoch (a new draw every epoch)."""
    return random.Random(f"{seed}:{epoch}:{row}")


def last_index(ids: Sequence[int], seq: Sequence[int], start: int = 0) -> int:
    """Start of the last occurrence of token sequence ``seq`` wholly inside ``ids[start:]`` (absolute), or -1."""
    m = len(seq)
    first = seq[0]
    for i in range(len(ids) - m, start - 1, -1):
        if ids[i] == first and list(ids[i : i + m]) == list(seq):
            return i
    return -1


def scored_positions(
    ids: Sequence[int],
    prompt_len: int,
    rule: MaskRule = MaskRule(),
    rng: random.Random | None = None,
    stats: MaskStats | None = None,
) -> list[bool]:
    """``True`` where the loss scores position ``i`` of ``ids`` (see module docstring)."""
    n = len(ids)
    prompt_len = max(0, min(prompt_len, n))
    keep = [False] * prompt_len + [True] * (n - prompt_len)
    ignored_thinking = 0
    if rule.mask_thinking:
        e = last_index(ids, rule.close_ids, prompt_len)
        if e < 0:
            if stats is not None:
                stats.missing_close += 1
            if rule.on_missing_close == "ignore":
                keep = [False] * n
        else:
            end = e if rule.keep_close_tag else e + len(rule.close_ids)
            region = list(range(prompt_len, end))
            if rule.partial_p < 1.0:
                k = int(len(region) * rule.partial_p)
                region = (rng or random.Random()).sample(region, k) if k else []
            for i in region:
                keep[i] = False
            ignored_thinking = len(region)
    if stats is not None:
        stats.sequences += 1
        stats.scored_tokens += sum(keep)
        stats.ignored_thinking_tokens += ignored_thinking
    return keep


def labels_for(
    ids: Sequence[int],
    prompt_len: int,
    rule: MaskRule = MaskRule(),
    rng: random.Random | None = None,
    stats: MaskStats | None = None,
) -> list[int]:
    """``ids`` with ignored positions replaced by ``IGNORE`` (-100): the labels a trainer sees."""
    keep = scored_positions(ids, prompt_len, rule, rng, stats)
    return [t if k else IGNORE for t, k in zip(ids, keep)]


def end_label_at(prompt_len: int, chosen_end: int, labels: Sequence[int]) -> int:
    """Sequence index of the chosen reply's end-of-turn token when its label is scored, else -1.

    ``chosen_end`` is ``Encoder``'s index into the reply's ids (-1: the reply has no end of turn).
    """
    at = prompt_len + chosen_end
    return at if chosen_end >= 0 and labels[at] != IGNORE else -1


def end_weight_rows(ends: Sequence[int], width: int, weight: float) -> list[list[float]] | None:
    """NLL weights over the ``width - 1`` next-token targets of each chosen row (None when ``weight`` is 1).

    ``weight`` at the target that scores each row's end-of-turn token (target ``t`` scores token
    ``t + 1``), 1 elsewhere; ``ends`` are ``end_label_at`` indices.
    """
    if weight == 1.0:
        return None
    rows = [[1.0] * (width - 1) for _ in ends]
    for row, at in zip(rows, ends):
        if at > 0:
            row[at - 1] = weight
    return rows
