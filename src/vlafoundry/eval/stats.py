"""Small statistics helpers for evaluation reports."""

from __future__ import annotations

import math

__all__ = ["wilson_interval"]


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
