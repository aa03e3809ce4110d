"""Fusion modules: the Fusion contract (pooled output, masks, absent modalities) and the fusion network."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from vlafoundry.nn.fusion import (
    EarlyFusion,
    FiLMFusion,
    LateFusion,
    MultimodalFusionNetwork,
    VisionLanguageFusion,
    _pooled_as_tokens,
    masked_mean_pool,
)

D, H, B, LV, LL, LE = 16, 4, 4, 6, 3, 2  # LV != LL on purpose

FACTORIES: dict[str, Callable[[], nn.Module]] = {
    "early": lambda: EarlyFusion(D, num_layers=2, num_heads=H, dropout=0.0),
    "late": lambda: LateFusion(D, num_layers=1, num_heads=H, dropout=0.0),
    "late0": lambda: LateFusion(D, num_layers=0, dropout=0.0),
    "vlf": lambda: VisionLanguageFusion(D, D, D, num_layers=1, num_heads=H, dropout=0.0),
    "vlf_post": lambda: VisionLanguageFusion(D, D, D, num_layers=2, num_heads=H, dropout=0.0, norm_first=False),
    "film": lambda: FiLMFusion(D, num_layers=2, dropout=0.0),
}


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vm = torch.ones(B, LV, dtype=torch.bool)
    lm = torch.ones(B, LL, dtype=torch.bool)
    em = torch.ones(B, LE, dtype=torch.bool)
    vm[0, 4:] = False  # padding
    lm[1, 2:] = False
    vm[2] = False  # sample 2: no vision
    lm[3] = False  # sample 3: no language
    em[1] = False  # sample 1: no extra tokens
    return {
        "visual_features": torch.randn(B, LV, D, generator=g),
        "language_features": torch.randn(B, LL, D, generator=g),
        "visual_mask": vm,
        "language_mask": lm,
        "extra_tokens": torch.randn(B, LE, D, generator=g),
        "extra_mask": em,
    }


def test_masked_mean_pool_matches_brute_force_and_ignores_padding() -> None:
    x = torch.randn(3, 5, 4)
    m = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    x[0, 2:] = float("nan")  # padding may hold anything
    out = masked_mean_pool(x, m)
    assert torch.allclose(out[0], x[0, :2].mean(0))
    assert torch.allclose(out[1], x[1].mean(0))
    assert torch.equal(out[2], torch.zeros(4))
    assert torch.allclose(masked_mean_pool(x[1:2]), x[1:2].mean(1))


@pytest.mark.parametrize("name", FACTORIES)
def test_output_shape_finite_and_all_parameters_get_gradients(name: str) -> None:
    torch.manual_seed(0)
    m = FACTORIES[name]()
    batch = _batch()
    batch["visual_features"].requires_grad_()
    out = m(**batch)
    assert out.shape == (B, D) and torch.isfinite(out).all()
    out.pow(2).sum().backward()
    assert torch.isfinite(batch["visual_features"].grad).all()
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", FACTORIES)
def test_padding_does_not_change_outputs(name: str) -> None:
    torch.manual_seed(0)
    m = FACTORIES[name]().eval()
    batch = _batch()
    out = m(**batch)
    changed = {k: v.clone() for k, v in batch.items()}
    for key, mkey in [("visual_features", "visual_mask"), ("language_features", "language_mask"),
                      ("extra_tokens", "extra_mask")]:
        pad = ~changed[mkey]
        changed[key][pad] = 30 * torch.randn(int(pad.sum()), D)
    assert torch.allclose(out, m(**changed), atol=1e-4)
    # and the valid tokens do matter
    changed["visual_features"][0, 0] += torch.randn(D)  # not a uniform shift: LayerNorm would remove that
    assert not torch.allclose(out[0], m(**changed)[0], atol=1e-4)


@pytest.mark.parametrize("name", FACTORIES)
def test_absent_modalities_none_equals_all_false_rows(name: str) -> None:
    torch.manual_seed(0)
    m = FACTORIES[name]().eval()
    batch = _batch()
    for key, mkey in [("visual_features", "visual_mask"), ("language_features", "language_mask")]:
        none_out = m(**{**batch, key: None, mkey: None})
        assert none_out.shape == (B, D) and torch.isfinite(none_out).all()
        all_false = m(**{**batch, mkey: torch.zeros_like(batch[mkey])})
        assert torch.allclose(none_out, all_false, atol=1e-5), key
    only_extra = m(None, None, extra_tokens=batch["extra_tokens"])
    only_lang = m(None, batch["language_features"])
    assert torch.isfinite(only_extra).all() and torch.isfinite(only_lang).all()
    assert only_lang.shape == (B, D)
    no_extra = m(batch["visual_features"], batch["language_features"])
    assert no_extra.shape == (B, D) and torch.isfinite(no_extra).all()


@pytest.mark.parametrize("name", FACTORIES)
def test_different_lengths_and_batch_independence(name: str) -> None:
    torch.manual_seed(0)
    m = FACTORIES[name]().eval()
    v, l = torch.randn(2, 9, D), torch.randn(2, 1, D)
    out = m(v, l)
    assert out.shape == (2, D)
    assert torch.allclose(out[1:], m(v[1:], l[1:]), atol=1e-5)


def test_vision_language_fusion_projects_dimensions() -> None:
    m = VisionLanguageFusion(vision_dim=12, lang_dim=20, fusion_dim=D, num_heads=H)
    out = m(torch.randn(2, 5, 12), torch.randn(2, 3, 20), extra_tokens=torch.randn(2, 1, D))
    assert out.shape == (2, D)
    with pytest.raises(ValueError, match="extra_tokens: expected last dimension 16"):
        m(torch.randn(2, 5, 12), torch.randn(2, 3, 20), extra_tokens=torch.randn(2, 1, 12))


class _CountingFFN(nn.Module):
    calls = 0

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        type(self).calls += 1
        return self.lin(x)


@pytest.mark.parametrize(
    "ctor",
    [
        lambda f: EarlyFusion(D, num_layers=1, num_heads=H, ffn_layer=f),
        lambda f: LateFusion(D, num_layers=1, num_heads=H, ffn_layer=f),
        lambda f: VisionLanguageFusion(D, D, D, num_heads=H, ffn_layer=f),
    ],
)
def test_ffn_layer_is_used(ctor: Callable) -> None:
    _CountingFFN.calls = 0
    m = ctor(_CountingFFN)
    m(**_batch())
    assert _CountingFFN.calls > 0


def test_fusion_bad_inputs() -> None:
    m = EarlyFusion(D, num_heads=H)
    batch = _batch()
    with pytest.raises(ValueError, match="all None"):
        m(None, None)
    with pytest.raises(ValueError, match="visual_features: expected last dimension 16"):
        m(torch.randn(B, LV, 8), None)
    with pytest.raises(ValueError, match="language_mask: expected shape"):
        m(batch["visual_features"], batch["language_features"], language_mask=batch["visual_mask"])
    with pytest.raises(ValueError, match="visual_mask: given without visual_features"):
        m(None, batch["language_features"], visual_mask=batch["visual_mask"])
    with pytest.raises(ValueError, match="one batch size"):
        m(batch["visual_features"], batch["language_features"][:2])
    with pytest.raises(ValueError, match="extra_tokens: expected a tensor of rank 3"):
        FiLMFusion(D)(batch["visual_features"], None, extra_tokens=torch.randn(B, D))


POOLED = ["early", "late", "late0"]  # the chapter's EarlyFusion / LateFusion take pooled (B, D) features


@pytest.mark.parametrize("name", POOLED)
def test_pooled_features_equal_length_one_sequences(name: str) -> None:
    """(B, D) is read as a sequence of one token: same output (atol 1e-6) and gradients as x[:, None]."""
    torch.manual_seed(0)
    m = FACTORIES[name]().eval()
    g = torch.Generator().manual_seed(4)
    v = torch.randn(B, D, generator=g, requires_grad=True)
    l = torch.randn(B, D, generator=g)
    e = torch.randn(B, D, generator=g)
    out = m(v, l)
    assert out.shape == (B, D) and torch.isfinite(out).all()
    assert torch.allclose(out, m(v[:, None], l[:, None]), atol=1e-6)
    (gv,) = torch.autograd.grad(out.pow(2).sum(), v)
    (gv_seq,) = torch.autograd.grad(m(v[:, None], l[:, None]).pow(2).sum(), v)
    assert torch.allclose(gv, gv_seq, atol=1e-6)
    # with a per-sample presence mask (B,), extra tokens, and mixed with token sequences
    present = torch.tensor([True, False, True, True])
    seq = torch.randn(B, LL, D, generator=g)
    pooled_out = m(v, seq, visual_mask=present, extra_tokens=e)
    seq_out = m(v[:, None], seq, visual_mask=present[:, None], extra_tokens=e[:, None])
    assert torch.allclose(pooled_out, seq_out, atol=1e-6)
    # an absent pooled vector is the same as an absent modality
    assert torch.allclose(pooled_out[1], m(None, seq[1:2], extra_tokens=e[1:2])[0], atol=1e-5)


def test_token_sequences_pass_unchanged_and_bad_pooled_inputs_raise() -> None:
    """Token sequences (the policies' form) reach the modules untouched: the same tensor objects, so the existing
    behaviour (covered by the tests above) is unchanged. Pooled inputs are validated like sequences."""
    batch = _batch()
    for key, mkey in [("visual_features", "visual_mask"), ("extra_tokens", "extra_mask")]:
        x, mask = _pooled_as_tokens(batch[key], batch[mkey])
        assert x is batch[key] and mask is batch[mkey]
    assert _pooled_as_tokens(None, None) == (None, None)
    for name in POOLED:
        m = FACTORIES[name]()
        with pytest.raises(ValueError, match="visual_mask: expected shape \\(4,\\)"):
            m(torch.randn(B, D), None, visual_mask=torch.ones(B, 1, dtype=torch.bool))
        with pytest.raises(ValueError, match="visual_features: expected a tensor of rank 2 or 3"):
            m(torch.randn(D), None)
        with pytest.raises(ValueError, match="language_features: expected last dimension 16"):
            m(None, torch.randn(B, 8))
        with pytest.raises(ValueError, match="one batch size"):
            m(torch.randn(B, D), torch.randn(B - 1, D))


# ------------------------------------------------------------------------------------ MultimodalFusionNetwork
def _mfn_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    vm = torch.ones(3, 5, dtype=torch.bool)
    lm = torch.ones(3, 2, dtype=torch.bool)
    am = torch.ones(3, 4, dtype=torch.bool)
    vm[0, 3:] = False
    lm[1, 1:] = False
    am[2, 2:] = False
    return {
        "vision_input": torch.randn(3, 5, 10, generator=g),
        "lang_input": torch.randn(3, 2, 12, generator=g),
        "action_input": torch.randn(3, 4, 7, generator=g),
        "vision_mask": vm,
        "lang_mask": lm,
        "action_mask": am,
    }


@pytest.mark.parametrize("norm_first", [True, False])
def test_fusion_network_shapes_gradients_and_masks(norm_first: bool) -> None:
    torch.manual_seed(0)
    net = MultimodalFusionNetwork(10, 12, 7, d_model=D, num_heads=H, num_layers=2, norm_first=norm_first)
    inp = _mfn_inputs()
    vo, lo, ao = net(**inp)
    assert vo.shape == (3, 5, 10) and lo.shape == (3, 2, 12) and ao.shape == (3, 4, 7)
    (vo.pow(2).sum() + lo.pow(2).sum() + ao.pow(2).sum()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    net.eval()
    vo, lo, ao = net(**inp)
    changed = {k: v.clone() for k, v in inp.items()}
    for key, mkey in [("vision_input", "vision_mask"), ("lang_input", "lang_mask"), ("action_input", "action_mask")]:
        pad = ~changed[mkey]
        changed[key][pad] = 30 * torch.randn(int(pad.sum()), changed[key].shape[-1])
    vo2, lo2, ao2 = net(**changed)
    assert torch.allclose(vo[inp["vision_mask"]], vo2[inp["vision_mask"]], atol=1e-4)
    assert torch.allclose(lo[inp["lang_mask"]], lo2[inp["lang_mask"]], atol=1e-4)
    assert torch.allclose(ao[inp["action_mask"]], ao2[inp["action_mask"]], atol=1e-4)
    two = net(inp["vision_input"], inp["lang_input"], vision_mask=inp["vision_mask"])
    assert len(two) == 2 and two[0].shape == (3, 5, 10) and two[1].shape == (3, 2, 12)


def test_fusion_network_fully_masked_sample_is_finite() -> None:
    net = MultimodalFusionNetwork(10, 12, 7, d_model=D, num_heads=H, num_layers=1)
    inp = _mfn_inputs()
    inp["vision_mask"][0] = False
    inp["lang_mask"][0] = False
    inp["action_mask"][0] = False
    outs = net(**inp)
    assert all(torch.isfinite(o).all() for o in outs)
    with pytest.raises(ValueError, match="action_input: expected last dimension 7"):
        net(inp["vision_input"], inp["lang_input"], torch.randn(3, 4, 3))
