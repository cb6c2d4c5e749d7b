"""DRY ("don't repeat yourself") penalty: what it is, once, for the backends that sample in Python.

A token that would extend a verbatim repeat of earlier output is penalised. For each candidate token ``t``:
find every earlier position ``i`` where ``t`` was emitted and measure how many tokens before ``i`` match the
tokens just before the end of the output (the match stops at a sequence breaker); with ``n`` the longest such
match, ``t``'s logit loses ``multiplier * base ** (n - allowed_length)`` when ``n >= allowed_length``. A repeat
grows its penalty exponentially with its length, so loops break while shared words and short phrases stay free.
llama.cpp has its own sampler for it (``llama_sampler_init_dry``); this one follows the same rule over the
generated tokens, with a token counted as a breaker when its text contains one of ``DRY_BREAKERS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

# llama.cpp's defaults: a repeat does not carry across a line break, a colon, a quote or markdown emphasis.
DRY_BREAKERS = ("\n", ":", '"', "*")


class DryPenalty:
    """The DRY penalties for the next token, from the tokens generated so far in one call.

    ``piece`` gives a token's text (to tell breakers); ``window`` is how many of the last generated tokens
    are searched (the call's token limit: the whole generation).
    """

    def __init__(self, multiplier: float, base: float, allowed: int, piece: Callable[[int], str], window: int):
        self.multiplier, self.base, self.allowed, self.window = multiplier, base, allowed, window
        self._piece = piece
        self._breaker: dict[int, bool] = {}
        # pow() overflows a float32 logit past this exponent: clamp it, as llama.cpp does
        self._max_exp = int(88.7228391 / math.log(base)) if base > 1.000001 else 0

    def is_breaker(self, token: int) -> bool:
        hit = self._breaker.get(token)
        if hit is None:
            text = self._piece(token)
            hit = self._breaker[token] = any(b in text for b in DRY_BREAKERS)
        return hit

    def __call__(self, generated: Sequence[int]) -> dict[int, float]:
        """{token: logit penalty} for the tokens that would extend a repeat of at least ``allowed`` tokens."""
        tail = list(generated[-self.window :])
        n = len(tail)
        if n <= self.allowed:
            return {}
        limit = 0  # the current repeat cannot reach back past the last breaker
        while limit < n and not self.is_breaker(tail[n - 1 - limit]):
            limit += 1
        if limit < self.allowed:
            return {}
        # Z-algorithm on the reversed tail: z[k] = how many tokens ending k back match the tokens ending now.
        # Linear in the tail, where comparing each earlier stretch directly is quadratic on a degenerate loop.
        rev = tail[::-1]
        z = [0] * n
        left = right = 0
        for k in range(1, n):
            if k < right:
                z[k] = min(right - k, z[k - left])
            while k + z[k] < n and rev[z[k]] == rev[k + z[k]]:
                z[k] += 1
            if k + z[k] > right:
                left, right = k, k + z[k]
        longest: dict[int, int] = {}
        for k in range(1, n):  # the stretch ending k back was followed by rev[k - 1]
            length = min(z[k], limit)
            if length >= self.allowed and length > longest.get(rev[k - 1], 0):
                longest[rev[k - 1]] = length
        out = {}
        for token, k in longest.items():
            if self.is_breaker(token):
                continue  # a breaker ends the repeat rather than extending it
            exp = k - self.allowed
            if self._max_exp and exp > self._max_exp:
                exp = self._max_exp
            out[token] = self.multiplier * self.base**exp
        return out


def dry_for(sampling, piece: Callable[[int], str], window: int) -> DryPenalty | None:
    """The penalty ``sampling`` asks for, or None when DRY is off."""
    if sampling.dry_multiplier <= 0:
        return None
    return DryPenalty(sampling.dry_multiplier, sampling.dry_base, sampling.dry_allowed_length, piece, window)
