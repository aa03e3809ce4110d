from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vlafoundry.nn.action import ActionDecoder, ActionEncoder, ActionSequenceProcessor, ActionTokenizer


def _all_grads(module: torch.nn.Module) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# --- ActionEncoder -----------------------------------------------------------------------------------------------


def test_action_encoder_continuous_and_discrete_match_reference():
    torch.manual_seed(0)
    enc = ActionEncoder(action_dim=4, d_model=8, num_discrete_actions=7)
    a = torch.randn(3, 4)
    torch.testing.assert_close(enc(a), F.linear(a, enc.action_proj.weight, enc.action_proj.bias))
    chunk = torch.randn(3, 5, 4)
    assert enc(chunk).shape == (3, 5, 8)
    d = torch.tensor([[0, 6], [3, 2]])
    torch.testing.assert_close(enc(d), enc.discrete_action_embed.weight[d])  # inferred from dtype
    assert enc(torch.tensor([1, 2, 3]), is_discrete=True).shape == (3, 8)
    # explicit continuous on integer values casts to float
    torch.testing.assert_close(enc(torch.ones(2, 4, dtype=torch.long), is_discrete=False), enc(torch.ones(2, 4)))


def test_action_encoder_bad_inputs():
    enc = ActionEncoder(action_dim=2, d_model=8, num_discrete_actions=5)
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        enc(torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"\[0, 4\]"):
        enc(torch.tensor([-1]))
    with pytest.raises(ValueError, match="last dimension"):
        enc(torch.randn(3, 3))
    with pytest.raises(ValueError, match="integer"):
        enc(torch.randn(3, 2), is_discrete=True)
    with pytest.raises(ValueError, match="num_discrete_actions"):
        ActionEncoder(action_dim=2, d_model=8)(torch.tensor([1]))
    with pytest.raises(ValueError, match="Tensor"):
        enc([0.1, 0.2])


def test_action_encoder_all_params_get_grad():
    enc = ActionEncoder(action_dim=3, d_model=8, num_discrete_actions=4)
    (enc(torch.randn(2, 3)).square().sum() + enc(torch.arange(4)).square().sum()).backward()
    _all_grads(enc)


# --- ActionDecoder -----------------------------------------------------------------------------------------------


def test_action_decoder_matches_reference_and_max_action():
    torch.manual_seed(0)
    dec = ActionDecoder(d_model=8, action_dim=3, max_action=[0.5, 1.0, 2.0], hidden_dim=6)
    x = torch.randn(4, 8)
    lin1, act, lin2 = dec.action_head
    ref = torch.tanh(lin2(F.gelu(lin1(x)))) * torch.tensor([0.5, 1.0, 2.0])
    out = dec(x)
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    params = list(dec.parameters())
    got = torch.autograd.grad((out * g).sum(), params)
    want = torch.autograd.grad((ref * g).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    out, raw = dec(x, return_raw=True)
    torch.testing.assert_close(out, torch.tanh(raw) * torch.tensor([0.5, 1.0, 2.0]))


def test_action_decoder_bounds_per_dim():
    torch.manual_seed(0)
    low, high = [-1.0, 0.0, 2.0], [1.0, 0.5, 5.0]
    dec = ActionDecoder(d_model=8, action_dim=3, low=low, high=high, chunk_size=4)
    x = torch.randn(64, 8) * 1e4  # saturate tanh
    out = dec(x).detach()
    assert out.shape == (64, 4, 3)
    lo, hi = torch.tensor(low), torch.tensor(high)
    assert torch.all(out >= lo) and torch.all(out <= hi)
    flat = out.reshape(-1, 3)
    torch.testing.assert_close(flat.min(0).values, lo, atol=1e-4, rtol=0)  # both ends are reached
    torch.testing.assert_close(flat.max(0).values, hi, atol=1e-4, rtol=0)
    torch.testing.assert_close(dec.low, lo)
    torch.testing.assert_close(dec.high, hi)
    assert {"scale", "offset"} <= set(dec.state_dict())


def test_action_decoder_bad_args_and_inputs():
    with pytest.raises(ValueError, match="low < high"):
        ActionDecoder(8, 2, low=[0.0, 1.0], high=[1.0, 1.0])
    with pytest.raises(ValueError, match="both"):
        ActionDecoder(8, 2, low=[0.0, 0.0])
    with pytest.raises(ValueError, match="max_action"):
        ActionDecoder(8, 2, max_action=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="positive"):
        ActionDecoder(8, 2, max_action=0.0)
    dec = ActionDecoder(8, 2)
    with pytest.raises(ValueError, match="last dimension"):
        dec(torch.randn(2, 7))


def test_action_decoder_all_params_get_grad():
    dec = ActionDecoder(d_model=8, action_dim=2, chunk_size=3, act_layer=torch.nn.ReLU)
    dec(torch.randn(5, 8)).square().sum().backward()
    _all_grads(dec)


# --- ActionSequenceProcessor --------------------------------------------------------------------------------------


def test_action_sequence_processor_mask_and_decode():
    torch.manual_seed(0)
    proc = ActionSequenceProcessor(action_dim=3, sequence_length=8, d_model=16, num_layers=2, num_heads=4).eval()
    x = torch.randn(2, 6, 3)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    h = proc(x, mask)
    assert h.shape == (2, 6, 16)
    x2 = x.clone()
    x2[1, 4:] = 100.0  # padded steps do not leak into valid ones
    h2 = proc(x2, mask)
    torch.testing.assert_close(h2[mask], h[mask], atol=1e-5, rtol=0)
    assert torch.all(h2[~mask] == 0)
    x3 = x.clone()
    x3[1, 2] += 1.0  # a valid step does change the others
    assert not torch.allclose(proc(x3, mask)[1, 0], h[1, 0])
    assert proc.decode(h).shape == (2, 6, 3)
    assert proc(x[:, :1]).shape == (2, 1, 16)


def test_action_sequence_processor_all_masked_row_is_finite():
    proc = ActionSequenceProcessor(action_dim=2, sequence_length=4, d_model=8, num_heads=2).eval()
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = proc(torch.randn(2, 3, 2), mask)
    assert torch.isfinite(out).all() and torch.all(out[1] == 0)


def test_action_sequence_processor_bad_inputs():
    proc = ActionSequenceProcessor(action_dim=3, sequence_length=4, d_model=8, num_heads=2)
    with pytest.raises(ValueError, match="sequence_length"):
        proc(torch.randn(1, 5, 3))
    with pytest.raises(ValueError, match="last dimension"):
        proc(torch.randn(1, 4, 2))
    with pytest.raises(ValueError, match="mask"):
        proc(torch.randn(1, 4, 3), torch.ones(1, 3, dtype=torch.bool))


def test_action_sequence_processor_all_params_get_grad():
    proc = ActionSequenceProcessor(action_dim=3, sequence_length=5, d_model=8, num_layers=2, num_heads=2)
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    proc.decode(proc(torch.randn(2, 5, 3), mask)).square().sum().backward()
    _all_grads(proc)


# --- ActionTokenizer ---------------------------------------------------------------------------------------------


def _brute_force_bins(x: np.ndarray, low: np.ndarray, high: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(x.shape, dtype=np.int64)
    for idx in np.ndindex(x.shape):
        d = idx[-1]
        v = min(max(x[idx], low[d]), high[d])
        w = (high[d] - low[d]) / n
        b = 0
        while b < n - 1 and v >= low[d] + (b + 1) * w:
            b += 1
        out[idx] = b
    return out


def test_action_tokenizer_matches_brute_force_per_dim():
    rng = np.random.default_rng(0)
    low, high = np.array([-1.0, 0.0, -3.0]), np.array([1.0, 0.25, 5.0])
    tok = ActionTokenizer(num_bins=17, low=low, high=high)
    assert tok.action_dim == 3
    x = rng.uniform(low - 0.5, high + 0.5, size=(50, 2, 3))
    x[0, 0] = low
    x[0, 1] = high
    bins = tok.encode(x)
    assert bins.dtype == np.int64 and bins.shape == x.shape
    np.testing.assert_array_equal(bins, _brute_force_bins(x, low, high, 17))
    err = np.abs(tok.decode(bins) - np.clip(x, low, high))
    assert np.all(err <= tok.bin_width / 2 + 1e-6)
    # torch in -> torch out, same bins
    tb = tok.encode(torch.from_numpy(x).float())
    x32 = x.astype(np.float32).astype(np.float64)
    assert tb.dtype == torch.int64 and torch.equal(tb, torch.from_numpy(_brute_force_bins(x32, low, high, 17)))
    assert isinstance(tok.decode(tb), torch.Tensor)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-2.0, 2.0, allow_nan=False), min_size=1, max_size=8),
    st.integers(1, 300),
)
@example([-1.401298464324817e-45], 2)  # the division rounds up onto the edge at 0
def test_action_tokenizer_round_trip_property(values, num_bins):
    tok = ActionTokenizer(num_bins=num_bins)  # scalar bounds: any action width
    x = np.asarray(values)[:, None]
    bins = tok.encode(x)
    assert bins.min() >= 0 and bins.max() < num_bins
    np.testing.assert_array_equal(bins, _brute_force_bins(x, np.array([-1.0]), np.array([1.0]), num_bins))
    assert np.all(np.abs(tok.decode(bins) - np.clip(x, -1, 1)) <= (2.0 / num_bins) / 2 + 1e-6)


def test_action_tokenizer_dict_round_trip_and_fit():
    tok = ActionTokenizer(num_bins=256, low=[-1, -2], high=[1, 2])
    again = ActionTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    x = np.random.default_rng(1).uniform(-2, 2, size=(20, 2))
    np.testing.assert_array_equal(again.encode(x), tok.encode(x))
    scalar = ActionTokenizer.from_dict(ActionTokenizer(64, -0.5, 0.5).to_dict())
    assert scalar.action_dim is None and scalar.encode(np.zeros((1, 5))).shape == (1, 5)
    data = np.random.default_rng(2).normal(size=(2000, 3)) * np.array([1.0, 0.1, 5.0])
    fitted = ActionTokenizer.fit(data, num_bins=32, quantile=0.01)
    np.testing.assert_allclose(fitted.low, np.quantile(data, 0.01, axis=0))
    np.testing.assert_allclose(fitted.high, np.quantile(data, 0.99, axis=0))


def test_action_tokenizer_bad_inputs():
    tok = ActionTokenizer(num_bins=8, low=[-1, -1], high=[1, 1])
    with pytest.raises(ValueError, match="last dimension"):
        tok.encode(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="finite"):
        tok.encode(np.array([[np.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        tok.decode(np.array([[0, 8]]))
    with pytest.raises(ValueError, match="integer"):
        tok.decode(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="floating"):
        tok.encode(np.array([[1, 0]]))
    with pytest.raises(ValueError, match="low < high"):
        ActionTokenizer(8, low=1.0, high=1.0)
    with pytest.raises(ValueError, match="num_bins"):
        ActionTokenizer(0)
