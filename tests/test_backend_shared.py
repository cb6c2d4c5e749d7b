"""Rules the in-process backends and the trainers share, declared once in ``backends/base.py``."""

from __future__ import annotations

from preflexor_local.backends.base import CONTEXT_CAP, common_prefix, context_window, reusable_prefix


def test_common_prefix():
    assert common_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([5], [6]) == 0
    assert common_prefix([1, 2, 3], [1, 2, 3], limit=1) == 1
    assert common_prefix([1, 2, 3], [1, 2, 3], limit=-1) == 0


def test_reusable_prefix_keeps_the_last_prompt_token_for_fresh_logits():
    assert reusable_prefix([1, 2, 3], [1, 2, 3]) == 2  # the same prompt again: its last token is evaluated again
    assert reusable_prefix([1, 2, 3, 7, 8], [1, 2, 3, 4, 5]) == 3
    assert reusable_prefix([1, 2], [1, 2, 3, 4]) == 2
    assert reusable_prefix([9], [1, 2]) == 0
    assert reusable_prefix([1], []) == 0


def test_context_window_is_the_trained_length_capped_unless_asked():
    assert CONTEXT_CAP == 8192
    assert context_window(512) == 512
    assert context_window(131072) == CONTEXT_CAP
    assert context_window(None) == CONTEXT_CAP  # unknown trained length
    assert context_window(131072, asked=32768) == 32768  # --ctx opens more than the cap
    assert context_window(512, asked=64) == 64
