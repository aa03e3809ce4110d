"""Property-based tests (hypothesis): random sizes, lengths, masks and missing modalities never crash, never give
NaN/inf, and always give the promised shapes (and the promised exact zeros where nothing is valid).

Each property runs ``max_examples=25`` random cases (``deadline=None``: CPU timing varies); sizes stay tiny.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vlafoundry.models import PolicyConfig, PolicySpec, VLAPolicy
from vlafoundry.nn import (
    EarlyFusion,
    FiLMFusion,
    LateFusion,
    MultiHeadAttention,
    MultimodalEncoder,
    MultimodalMixtureOfExperts,
    TextTokenizer,
    VisionLanguageFusion,
)

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def masks(draw, batch: int, length: int) -> torch.Tensor:
    """(B, L) bool masks; rows may be all False (an absent sample) or all True."""
    rows = []
    for _ in range(batch):
        kind = draw(st.sampled_from(["random", "none", "all"]))
        if kind == "none":
            rows.append([False] * length)
        elif kind == "all":
            rows.append([True] * length)
        else:
            rows.append(draw(st.lists(st.booleans(), min_size=length, max_size=length)))
    return torch.tensor(rows, dtype=torch.bool).reshape(batch, length)


def _tokens(batch: int, length: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, length, dim, generator=torch.Generator().manual_seed(seed)).requires_grad_()


def _assert_finite_with_grads(out: torch.Tensor, *inputs: torch.Tensor) -> None:
    assert torch.isfinite(out).all()
    out.float().square().sum().backward()
    for x in inputs:
        if x is not None and x.grad is not None:
            assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------ attention
@SETTINGS
@given(data=st.data(), b=st.integers(1, 3), lq=st.integers(1, 5), lk=st.integers(1, 6),
       heads=st.sampled_from([1, 2, 4]), head_dim=st.sampled_from([2, 4]), self_attn=st.booleans(),
       mask_kind=st.sampled_from(["none", "padding", "attn2d", "attn3d", "both"]))
def test_multihead_attention(data, b, lq, lk, heads, head_dim, self_attn, mask_kind):
    d = heads * head_dim
    torch.manual_seed(0)
    mha = MultiHeadAttention(d, heads, dropout=0.0)
    if self_attn:
        lk = lq
    kpm = data.draw(masks(b, lk)) if mask_kind in ("padding", "both") else None
    attn = None
    if mask_kind in ("attn2d", "both"):
        attn = torch.tensor(data.draw(st.lists(st.booleans(), min_size=lq * lk, max_size=lq * lk))).view(lq, lk)
    elif mask_kind == "attn3d":
        attn = torch.tensor(data.draw(st.lists(st.booleans(), min_size=b * lq * lk, max_size=b * lq * lk)))
        attn = attn.view(b, lq, lk)
    q = _tokens(b, lq, d, 1)
    kv = q if self_attn else _tokens(b, lk, d, 2)
    out = mha(q, kv, kv, mask=attn, key_padding_mask=kpm)
    assert out.shape == (b, lq, d)
    _assert_finite_with_grads(out, q, kv)
    allowed = torch.ones(b, lq, lk, dtype=torch.bool)
    if attn is not None:
        allowed = allowed & (attn if attn.dim() == 3 else attn.unsqueeze(0))
    if kpm is not None:
        allowed = allowed & kpm.unsqueeze(1)
    empty = ~allowed.any(-1)  # (B, Lq): queries with nothing to attend to give exact zeros
    assert torch.equal(out.detach()[empty], torch.zeros(int(empty.sum()), d))


# ------------------------------------------------------------------------------------------ encoder
@SETTINGS
@given(data=st.data(), b=st.integers(1, 3), lv=st.integers(1, 5), ll=st.integers(1, 5),
       layers=st.integers(1, 2), norm_first=st.booleans(), use_masks=st.booleans())
def test_multimodal_encoder(data, b, lv, ll, layers, norm_first, use_masks):
    d = 8
    torch.manual_seed(0)
    enc = MultimodalEncoder(d, layers, 2, 16, dropout=0.0, norm_first=norm_first)
    vm = data.draw(masks(b, lv)) if use_masks else None
    lm = data.draw(masks(b, ll)) if use_masks else None
    v, l = _tokens(b, lv, d, 3), _tokens(b, ll, d, 4)
    ov, ol = enc(v, l, vm, lm)
    assert ov.shape == (b, lv, d) and ol.shape == (b, ll, d)
    _assert_finite_with_grads(ov.sum() + ol.sum(), v, l)


# ------------------------------------------------------------------------------------------ fusion
FUSIONS = {
    "early": lambda d: EarlyFusion(d, num_layers=1, num_heads=2, dropout=0.0),
    "late": lambda d: LateFusion(d, num_layers=1, num_heads=2, dropout=0.0),
    "cross_attention": lambda d: VisionLanguageFusion(d, d, d, num_layers=1, num_heads=2, dropout=0.0),
    "film": lambda d: FiLMFusion(d, num_layers=1, dropout=0.0),
}


@pytest.mark.parametrize("kind", list(FUSIONS))
@SETTINGS
@given(data=st.data(), b=st.integers(1, 3), lv=st.integers(0, 5), ll=st.integers(0, 4), le=st.integers(0, 3),
       present=st.sets(st.sampled_from(["vision", "language", "extra"]), min_size=1),
       use_masks=st.booleans())
def test_fusion_any_subset_of_modalities(kind, data, b, lv, ll, le, present, use_masks):
    d = 8
    torch.manual_seed(0)
    fusion = FUSIONS[kind](d)
    args = {}
    for name, length, seed in (("vision", lv, 5), ("language", ll, 6), ("extra", le, 7)):
        if name not in present:
            args[name] = (None, None)
            continue
        m = data.draw(masks(b, length)) if use_masks else None
        args[name] = (_tokens(b, length, d, seed), m)
    out = fusion(args["vision"][0], args["language"][0], args["vision"][1], args["language"][1],
                 extra_tokens=args["extra"][0], extra_mask=args["extra"][1])
    assert out.shape == (b, d)
    _assert_finite_with_grads(out, *(a[0] for a in args.values()))


# ------------------------------------------------------------------------------------------ mixture of experts
@SETTINGS
@given(data=st.data(), e=st.integers(1, 5), k=st.integers(1, 3), cap=st.sampled_from([0.5, 1.0, 1.25, 2.0]),
       shape=st.sampled_from(["tokens", "sequence"]), n=st.integers(1, 12), trim=st.booleans(),
       use_mask=st.booleans(), groups=st.one_of(st.none(), st.integers(1, 6)))
def test_mixture_of_experts(data, e, k, cap, shape, n, trim, use_mask, groups):
    k = min(k, e)
    d = 8
    torch.manual_seed(0)
    moe = MultimodalMixtureOfExperts(e, d, top_k=k, capacity_factor=cap, d_ff=16, trim_buffer=trim,
                                     load_groups=groups)
    if shape == "tokens":
        mask = data.draw(masks(1, n)).view(n) if use_mask else None
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(8)).requires_grad_()
    else:
        b = data.draw(st.integers(1, 3))
        mask = data.draw(masks(b, n)) if use_mask else None
        x = torch.randn(b, n, d, generator=torch.Generator().manual_seed(8)).requires_grad_()
    y = moe(x, mask)
    assert y.shape == x.shape
    if mask is not None:
        assert torch.equal(y.detach()[~mask], torch.zeros(int((~mask).sum()), d))  # masked tokens: zero output
    assert moe.aux_loss.dim() == 0 and torch.isfinite(moe.aux_loss)
    stats = moe.last_stats
    assert len(stats["expert_load"]) == e and 0.0 <= stats["overflow_fraction"] <= 1.0
    _assert_finite_with_grads(y.sum() + moe.aux_loss, x)
    # The buffer layout (trimmed, load-sorted groups vs static C rows per expert) changes no result.
    static = moe.trim_buffer, moe.load_groups
    moe.trim_buffer, moe.load_groups = (not static[0]), 1
    assert torch.allclose(moe(x, mask), y, atol=1e-5)
    moe.trim_buffer, moe.load_groups = static


# ------------------------------------------------------------------------------------------ policy acting
INSTR = ["go to the red ball", "go to the blue key", "go to a box", "open the drawer"]


def _policy(kind: str, fusion: str, history: int, chunk: int) -> VLAPolicy:
    torch.manual_seed(0)
    tok = TextTokenizer.train(INSTR, kind="word")
    if kind == "babyai":
        spec = PolicySpec(env="babyai/GoToLocal", action_type="discrete", action_dim=1, num_actions=7, state_dim=4,
                          image_shape=[7, 7, 3], state_mean=[0.25] * 4, state_std=[0.43] * 4)
        cfg = PolicyConfig(d_model=16, num_heads=2, d_ff=32, num_layers=1, vision_layers=0, text_layers=0,
                           fusion=fusion, history=history, chunk=chunk)
    else:
        spec = PolicySpec(env="metaworld/push", action_type="continuous", action_dim=4, action_low=[-1.0] * 4,
                          action_high=[1.0] * 4, state_dim=39)
        cfg = PolicyConfig(d_model=16, num_heads=2, d_ff=32, num_layers=1, vision="none", text_layers=0,
                           fusion=fusion, history=history, chunk=chunk)
    return VLAPolicy(cfg, spec, tok).eval()


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(["babyai", "metaworld"]),
       fusion=st.sampled_from(["cross_attention", "early", "late", "film"]), n=st.integers(1, 4),
       history=st.integers(1, 2), chunk=st.integers(1, 2), steps=st.integers(1, 3))
def test_select_action_with_random_missing_modalities(data, kind, fusion, n, history, chunk, steps):
    policy = _policy(kind, fusion, history, chunk)
    g = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    modalities = ["image", "instruction", "state"] if kind == "babyai" else ["instruction", "state"]
    policy.reset()
    for _ in range(steps):
        obs = {"instruction": [INSTR[i] for i in g.integers(0, len(INSTR), n)]}
        if kind == "babyai":
            obs["image"] = np.stack([g.integers(0, 11, (n, 7, 7)), g.integers(0, 6, (n, 7, 7)),
                                     g.integers(0, 3, (n, 7, 7))], -1).astype(np.uint8)
            obs["state"] = np.eye(4, dtype=np.float32)[g.integers(0, 4, n)]
        else:
            obs["state"] = g.normal(size=(n, 39)).astype(np.float32)
        for m in modalities:  # any subset per row, including rows with every modality missing
            if data.draw(st.booleans()):
                obs[f"{m}_present"] = np.asarray(data.draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        actions = policy.select_action(obs)
        if kind == "babyai":
            assert actions.shape == (n,) and actions.dtype == np.int64 and ((actions >= 0) & (actions < 7)).all()
        else:
            assert actions.shape == (n, 4) and actions.dtype == np.float32
            assert np.isfinite(actions).all() and (np.abs(actions) <= 1.0).all()
        if data.draw(st.booleans()):
            policy.reset([int(i) for i in g.integers(0, n, 1)])  # one env's episode ended
