"""Tests for vlafoundry.eval.stats."""

from __future__ import annotations

import math

import pytest

from vlafoundry.eval.stats import mcnemar_exact, wilson_interval


def test_wilson_known_value():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_edges_and_n_zero():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson_interval(10, 10)
    assert high == 1.0 and low == pytest.approx(0.7225, abs=1e-4)


def test_wilson_against_closed_form_and_z():
    # Closed form at 30/100, z=2.576 (99%), computed independently.
    p, n, z = 0.3, 100, 2.576
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson_interval(30, 100, z=z) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert wilson_interval(30, 100, z=1.0)[1] < wilson_interval(30, 100)[1]  # narrower at lower confidence


def test_wilson_bad_inputs():
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match="n"):
        wilson_interval(0, -1)
    with pytest.raises(ValueError, match="z"):
        wilson_interval(1, 2, z=0)


@pytest.mark.parametrize("a,b", [(48, 40), (0, 7), (3, 3), (1, 0), (20, 5), (100, 130)])
def test_mcnemar_exact_equals_scipy_binomial_test(a, b):
    """Against scipy's two-sided exact binomial test of a successes in a + b trials at p = 1/2 (rel 1e-9)."""
    scipy_stats = pytest.importorskip("scipy.stats")
    assert mcnemar_exact(a, b) == pytest.approx(scipy_stats.binomtest(a, a + b, 0.5).pvalue, rel=1e-9)


def test_mcnemar_exact_edges():
    assert mcnemar_exact(0, 0) == 1.0
    assert round(mcnemar_exact(48, 40), 4) == 0.4557
    assert mcnemar_exact(5, 9) == mcnemar_exact(9, 5)
    with pytest.raises(ValueError, match="discordant"):
        mcnemar_exact(-1, 3)
