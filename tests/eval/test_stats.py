"""Tests for vlafoundry.eval.stats."""

from __future__ import annotations

import math

import pytest

from vlafoundry.eval.stats import wilson_interval


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
