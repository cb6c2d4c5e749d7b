"""Intervals and flip counts: the arithmetic behind every figure in a report.

* Proportions (accuracy, win rate) get the Wilson score interval, which stays
  inside [0, 1] and behaves at 0/n and n/n, where the normal approximation fails.
* Means (tokens, seconds) get mean ± 1.96 · s / √n (normal approximation).
* A flip is an item whose correctness changes between two paired answers to
  the same item: right→wrong (critique hurt) or wrong→right (critique helped).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The 95 % Wilson score interval for ``successes`` out of ``n`` (None when n = 0)."""
    if n <= 0:
        return None
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, got {successes}")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # At 0/n and n/n the bound is exactly 0 or 1 (rounding would leave 0.9999999999999999).
    return (0.0 if successes == 0 else max(0.0, centre - half), 1.0 if successes == n else min(1.0, centre + half))


def mean_ci(values: Sequence[float], z: float = Z95) -> tuple[float | None, tuple[float, float] | None]:
    """(mean, 95 % interval) of ``values``; the interval is None for fewer than two values."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return mean, (mean - half, mean + half)


def flips(pairs: Iterable[tuple[bool | None, bool | None]]) -> dict:
    """Counts over (before, after) correctness pairs; pairs with an unscored side are left out."""
    out = {"n": 0, "right_to_wrong": 0, "wrong_to_right": 0, "stayed_right": 0, "stayed_wrong": 0}
    for before, after in pairs:
        if before is None or after is None:
            continue
        out["n"] += 1
        key = {(True, False): "right_to_wrong", (False, True): "wrong_to_right", (True, True): "stayed_right", (False, False): "stayed_wrong"}
        out[key[(bool(before), bool(after))]] += 1
    out["net"] = out["wrong_to_right"] - out["right_to_wrong"]
    return out
