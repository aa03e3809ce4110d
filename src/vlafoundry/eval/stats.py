"""Small statistics helpers for evaluation reports."""

from __future__ import annotations

import math

__all__ = ["mcnemar_exact", "wilson_interval"]


def wilson_interval(successes: int | float, n: int | float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    ``z`` is the standard-normal quantile (1.96 -> 95%). Unlike the normal (Wald) interval it stays inside [0, 1]
    and is sensible at 0 or n successes and for small n. ``n == 0`` (no trials) returns the uninformative (0, 1).
    Example: ``wilson_interval(8, 10) == (0.4902, 0.9433)`` to 4 decimals.
    """
    if n < 0:
        raise ValueError(f"n: expected >= 0, got {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes: expected in [0, n={n}], got {successes}")
    if z <= 0:
        raise ValueError(f"z: expected > 0, got {z}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value for two policies scored on the same episodes.

    ``only_a``: episodes only policy A solved, ``only_b``: only B (the discordant pairs; episodes both or neither
    solved carry no information about a difference). Under "no difference" each discordant episode is A's with
    probability 1/2, so p = min(1, 2 * P[Binomial(n, 1/2) <= min(only_a, only_b)]) with n = only_a + only_b;
    no discordant episode gives 1. Example: ``mcnemar_exact(48, 40) == 0.4557`` to 4 decimals.
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"discordant counts: expected >= 0, got {only_a} and {only_b}")
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2.0 * tail)
