"""The one label-mask function: exact positions, property tests, stated rules."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preflexor_local.errors import PreflexorError
from preflexor_local.train.masks import IGNORE, MaskRule, MaskStats, draw_rng, labels_for, scored_positions

OPEN, CLOSE = 90, 91


def test_completion_only_ignores_exactly_the_prompt():
    ids = [1, 2, 3, 10, 11, 12]
    assert labels_for(ids, 3) == [IGNORE, IGNORE, IGNORE, 10, 11, 12]


def test_thinking_mask_ignores_everything_before_the_last_close_tag():
    #      prompt   | open think   close think  close  answer eos
    ids = [1, 2, 3, OPEN, 5, 6, CLOSE, 7, CLOSE, 8, 9, 2]
    rule = MaskRule(mask_thinking=True, close_ids=(CLOSE,))
    labels = labels_for(ids, 3, rule)
    assert labels == [IGNORE] * 8 + [CLOSE, 8, 9, 2]
    rule2 = MaskRule(mask_thinking=True, close_ids=(CLOSE,), keep_close_tag=False)
    assert labels_for(ids, 3, rule2) == [IGNORE] * 9 + [8, 9, 2]


def test_close_tag_in_prompt_is_not_used():
    ids = [1, CLOSE, 3, 5, 6]  # a prefilled close tag lives in the prompt
    stats = MaskStats()
    rule = MaskRule(mask_thinking=True, close_ids=(CLOSE,))
    assert labels_for(ids, 3, rule, stats=stats) == [IGNORE] * 3 + [5, 6]
    assert stats.missing_close == 1


def test_missing_close_rules_are_counted():
    ids = [1, 2, OPEN, 5, 6]
    stats = MaskStats()
    score = MaskRule(mask_thinking=True, close_ids=(CLOSE,), on_missing_close="score")
    ignore = MaskRule(mask_thinking=True, close_ids=(CLOSE,), on_missing_close="ignore")
    assert labels_for(ids, 2, score, stats=stats) == [IGNORE, IGNORE, OPEN, 5, 6]
    assert labels_for(ids, 2, ignore, stats=stats) == [IGNORE] * 5
    assert stats.missing_close == 2 and stats.sequences == 2


def test_partial_mask_fraction_seeded_and_redrawn_per_epoch():
    ids = list(range(10)) + [OPEN] + list(range(100, 140)) + [CLOSE, 7, 8]
    rule = MaskRule(mask_thinking=True, close_ids=(CLOSE,), partial_p=0.25)
    region = range(10, 51)  # open tag .. last thinking token (41 positions)
    e0 = scored_positions(ids, 10, rule, draw_rng(0, 0, 3))
    again = scored_positions(ids, 10, rule, draw_rng(0, 0, 3))
    e1 = scored_positions(ids, 10, rule, draw_rng(0, 1, 3))
    assert e0 == again  # reproducible
    assert e0 != e1  # a new draw next epoch
    for keep in (e0, e1):
        assert sum(not keep[i] for i in region) == int(41 * 0.25)
        assert all(keep[i] for i in range(51, len(ids)))
        assert not any(keep[:10])


def test_rule_validation():
    with pytest.raises(PreflexorError):
        MaskRule(mask_thinking=True)
    with pytest.raises(PreflexorError):
        MaskRule(partial_p=1.5)
    with pytest.raises(PreflexorError):
        MaskRule(mask_thinking=True, close_ids=(1,), on_missing_close="drop")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 8), min_size=0, max_size=40), st.integers(0, 45), st.booleans(), st.floats(0.0, 1.0))
def test_properties(tokens, prompt_len, keep_tag, p):
    ids = [CLOSE if t == 8 else t for t in tokens]
    rule = MaskRule(mask_thinking=True, close_ids=(CLOSE,), keep_close_tag=keep_tag, partial_p=p)
    keep = scored_positions(ids, prompt_len, rule, random.Random(1))
    pl = min(prompt_len, len(ids))
    assert len(keep) == len(ids)
    assert not any(keep[:pl])  # prompt never scored
    closes = [i for i in range(pl, len(ids)) if ids[i] == CLOSE]
    if closes:
        e = closes[-1]
        assert all(keep[e + 1 :])  # the answer after the last close tag is always scored
        if keep_tag:
            assert keep[e]
        if p == 1.0:
            assert not any(keep[pl:e]) and keep[e] == keep_tag
    else:
        assert all(keep[pl:])
    labels = labels_for(ids, prompt_len, rule, random.Random(1))
    assert [x != IGNORE for x in labels] == keep


def test_plain_text_closing_tag_of_several_tokens():
    # Tags that stay plain text (a LoRA adapter over a vocabulary without them) close on a token sequence.
    close = (7, 8, 9)
    prompt = [1, 2]
    ids = prompt + [5, 7, 8, 5, 7, 8, 9, 6, 6]  # a partial match (7, 8) before the real tag must not count
    keep = scored_positions(ids, len(prompt), MaskRule(mask_thinking=True, close_ids=close))
    assert keep == [False, False, False, False, False, False, True, True, True, True, True]
    dropped = scored_positions(ids, len(prompt), MaskRule(mask_thinking=True, close_ids=close, keep_close_tag=False))
    assert dropped == [False] * 9 + [True, True]
