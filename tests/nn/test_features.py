"""FourierFeatures against a NumPy formula; shapes, gradients, validation; the policy option uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlafoundry.nn import FourierFeatures


def _reference(x: np.ndarray, f: int, include_input: bool) -> np.ndarray:
    cols = [x] if include_input else []
    sins = [np.sin((2.0**k) * np.pi * x) for k in range(f)]
    coss = [np.cos((2.0**k) * np.pi * x) for k in range(f)]
    return np.concatenate(cols + sins + coss, axis=-1)


@pytest.mark.parametrize("f,include_input", [(0, True), (1, True), (4, True), (3, False)])
def test_matches_numpy_formula(f, include_input):
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    m = FourierFeatures(3, f, include_input=include_input)
    y = m(x)
    assert y.shape == (2, 5, m.out_features) == (2, 5, 3 * (2 * f + int(include_input)))
    np.testing.assert_allclose(y.numpy(), _reference(x.numpy(), f, include_input), rtol=1e-9, atol=1e-9)


def test_gradient_matches_analytic_derivative():
    x = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    FourierFeatures(2, 3)(x).sum().backward()
    xs = x.detach().numpy()
    expected = 1.0 + sum((2.0**k) * np.pi * (np.cos((2.0**k) * np.pi * xs) - np.sin((2.0**k) * np.pi * xs))
                         for k in range(3))
    np.testing.assert_allclose(x.grad.numpy(), expected, rtol=1e-9, atol=1e-9)


def test_separates_nearby_inputs():
    """Two inputs 0.03 apart: raw features differ by 0.03, the top octave's by an order of magnitude more."""
    m = FourierFeatures(1, 6)
    a, b = m(torch.tensor([[0.40]])), m(torch.tensor([[0.43]]))
    assert (a - b).abs().max() > 10 * 0.03


def test_no_state_in_checkpoint_and_validation():
    assert FourierFeatures(3, 4).state_dict() == {}
    with pytest.raises(ValueError, match="num_frequencies"):
        FourierFeatures(3, -1)
    with pytest.raises(ValueError, match="in_features"):
        FourierFeatures(0, 2)
    with pytest.raises(ValueError, match="no features"):
        FourierFeatures(3, 0, include_input=False)
    with pytest.raises(ValueError, match="x"):
        FourierFeatures(3, 2)(torch.randn(2, 4))
