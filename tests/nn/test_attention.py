"""MultiHeadAttention, FeedForward, CrossModalAttention: equivalence with torch, masks, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlafoundry.nn.attention import CrossModalAttention, FeedForward, MultiHeadAttention

D, H = 16, 4
ATOL = 1e-5  # fp32 tolerance for forward, input and weight gradients against torch.nn.MultiheadAttention


def _pair(bias: bool = True) -> tuple[MultiHeadAttention, nn.MultiheadAttention]:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(D, H, dropout=0.0, bias=bias, batch_first=True)
    ours = MultiHeadAttention(D, H, dropout=0.0, bias=bias)
    # identical parameter names and shapes: the reference's state_dict loads directly
    ours.load_state_dict(ref.state_dict())
    if bias:  # torch initialises biases to 0; make them non-zero so their gradients are exercised
        with torch.no_grad():
            ref.in_proj_bias.normal_()
            ref.out_proj.bias.normal_()
        ours.load_state_dict(ref.state_dict())
    return ours, ref


def _to_torch_mask(mask: torch.Tensor | None, b: int) -> torch.Tensor | None:
    """Our mask (True = may attend) -> torch.nn.MultiheadAttention's (True = blocked, 3-D is (B*H, Lq, Lk))."""
    if mask is None:
        return None
    if mask.dim() == 3:
        mask = mask[:, None].expand(b, H, *mask.shape[1:])
    if mask.dim() == 4:
        mask = mask.reshape(b * H, *mask.shape[2:])
    return ~mask


def _assert_close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    assert torch.allclose(a, b, atol=ATOL, rtol=1e-4), f"{what}: max abs diff {(a - b).abs().max().item():.3g}"


CASES = ["self", "cross_kv_shared", "cross_kv_distinct"]
MASKS = [None, "kpm", "2d", "3d", "4d", "2d+kpm"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("masks", MASKS)
@pytest.mark.parametrize("bias", [True, False])
def test_matches_torch_multihead_attention(case: str, masks: str | None, bias: bool) -> None:
    ours, ref = _pair(bias)
    g = torch.Generator().manual_seed(1)
    b, lq = 3, 5
    lk = lq if case == "self" else 7  # Lq != Lk for cross-attention
    q = torch.randn(b, lq, D, generator=g, requires_grad=True)
    if case == "self":
        k = v = q
    elif case == "cross_kv_shared":
        k = v = torch.randn(b, lk, D, generator=g, requires_grad=True)
    else:
        k = torch.randn(b, lk, D, generator=g, requires_grad=True)
        v = torch.randn(b, lk, D, generator=g, requires_grad=True)
    kpm = mask = None
    if masks is not None and "kpm" in masks:
        kpm = torch.rand(b, lk, generator=g) > 0.3
        kpm[:, 0] = True  # every query keeps a key: torch's reference gives NaN otherwise
    if masks is not None and masks[:2] in ("2d", "3d", "4d"):
        shape = {"2d": (lq, lk), "3d": (b, lq, lk), "4d": (b, H, lq, lk)}[masks[:2]]
        mask = torch.rand(*shape, generator=g) > 0.4
        mask[..., 0] = True
    out = ours(q, k, v, mask=mask, key_padding_mask=kpm)
    ref_out, _ = ref(
        q, k, v, key_padding_mask=None if kpm is None else ~kpm, attn_mask=_to_torch_mask(mask, b), need_weights=False
    )
    assert out.shape == (b, lq, D)
    _assert_close(out, ref_out, "forward")
    w = torch.randn(b, lq, D, generator=g)
    inputs = [t for t in {id(t): t for t in (q, k, v)}.values()]
    g_ours = torch.autograd.grad((out * w).sum(), inputs + list(ours.parameters()))
    g_ref = torch.autograd.grad((ref_out * w).sum(), inputs + list(ref.parameters()))
    for i, (a, r) in enumerate(zip(g_ours, g_ref)):
        _assert_close(a, r, f"gradient #{i}")


def test_fully_masked_rows_give_zeros_and_finite_grads() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, dropout=0.0)
    with torch.no_grad():
        mha.out_proj.bias.fill_(0.5)  # a plain out_proj would leave 0.5 in an empty row
    q = torch.randn(3, 4, D, requires_grad=True)
    kv = torch.randn(3, 6, D, requires_grad=True)
    kpm = torch.ones(3, 6, dtype=torch.bool)
    kpm[1] = False  # sample 1: no valid key at all
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2] = False  # query 2 of every sample may attend to nothing
    out = mha(q, kv, kv, mask=mask, key_padding_mask=kpm)
    assert torch.isfinite(out).all()
    assert torch.equal(out[1], torch.zeros(4, D))
    assert torch.equal(out[:, 2], torch.zeros(3, D))
    assert out[0, 0].abs().sum() > 0
    out.pow(2).sum().backward()
    for t in [q, kv, *mha.parameters()]:
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert torch.equal(q.grad[1], torch.zeros(4, D))  # an empty row carries no gradient


def test_per_head_mask_zeroes_only_the_empty_head() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, dropout=0.0)
    mha.record_attention = True
    x = torch.randn(2, 3, D, requires_grad=True)
    mask = torch.ones(2, H, 3, 3, dtype=torch.bool)
    mask[0, 1, 2] = False  # head 1 of query 2 (sample 0) sees nothing; the other heads do
    out = mha(x, x, x, mask=mask)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert out[0, 2].abs().sum() > 0
    assert torch.equal(mha.last_attention[0, 1, 2], torch.zeros(3))


def test_record_attention_matches_brute_force() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, dropout=0.0)
    q, kv = torch.randn(2, 3, D), torch.randn(2, 5, D)
    kpm = torch.tensor([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    mha(q, kv, kv, key_padding_mask=kpm)
    assert mha.last_attention is None  # off by default
    mha.record_attention = True
    mha(q, kv, kv, key_padding_mask=kpm)
    att = mha.last_attention
    assert att.shape == (2, H, 3, 5) and not att.requires_grad
    d = D
    qh = F.linear(q, mha.in_proj_weight[:d], mha.in_proj_bias[:d]).view(2, 3, H, D // H).transpose(1, 2)
    kh = F.linear(kv, mha.in_proj_weight[d : 2 * d], mha.in_proj_bias[d : 2 * d]).view(2, 5, H, D // H).transpose(1, 2)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(D // H)
    expected = scores.masked_fill(~kpm[:, None, None], float("-inf")).softmax(-1)
    assert torch.allclose(att, expected, atol=1e-6)
    assert torch.equal(att[0, :, :, 2], torch.zeros(H, 3))


def test_padded_keys_do_not_change_outputs() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, dropout=0.0)
    x = torch.randn(2, 6, D)
    kpm = torch.ones(2, 6, dtype=torch.bool)
    kpm[0, 4:] = False
    out1 = mha(x, x, x, key_padding_mask=kpm)
    x2 = x.clone()
    x2[0, 4:] = 1e3 * torch.randn(2, D)
    out2 = mha(x2, x2, x2, key_padding_mask=kpm)
    assert torch.allclose(out1[0, :4], out2[0, :4], atol=1e-5)
    assert torch.equal(out1[1], out2[1])


def test_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, dropout=0.5)
    x = torch.randn(2, 8, D)
    mha.eval()
    assert torch.equal(mha(x, x, x), mha(x, x, x))
    mha.train()
    assert not torch.allclose(mha(x, x, x), mha(x, x, x))


@pytest.mark.parametrize("module", ["mha", "ffn", "cross"])
def test_every_parameter_gets_a_gradient(module: str) -> None:
    torch.manual_seed(0)
    if module == "mha":
        m: nn.Module = MultiHeadAttention(D, H)
        q, kv = torch.randn(2, 3, D), torch.randn(2, 5, D)
        out = m(q, kv, kv).sum()
    elif module == "ffn":
        m = FeedForward(D, 32)
        out = m(torch.randn(2, 3, D)).sum()
    else:
        m = CrossModalAttention(D, H)
        a, b = m(torch.randn(2, 3, D), torch.randn(2, 5, D))
        out = a.sum() + b.pow(2).sum()
    out.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_feedforward_formula() -> None:
    torch.manual_seed(0)
    ff = FeedForward(D, 24, dropout=0.0, act_layer=nn.SiLU)
    x = torch.randn(2, 3, D)
    expected = F.linear(F.silu(F.linear(x, ff.linear1.weight, ff.linear1.bias)), ff.linear2.weight, ff.linear2.bias)
    assert torch.allclose(ff(x), expected, atol=1e-6)


def test_cross_modal_attention_directions_and_masks() -> None:
    torch.manual_seed(0)
    cma = CrossModalAttention(D, H, dropout=0.0)
    assert cma.vision_from_lang.in_proj_weight is not cma.lang_from_vision.in_proj_weight
    assert cma.vision_from_lang.out_proj is not cma.lang_from_vision.out_proj
    v, l = torch.randn(2, 5, D), torch.randn(2, 3, D)  # Lv != Ll
    vm = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    lm = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    va, la = cma(v, l, vm, lm)
    assert va.shape == (2, 5, D) and la.shape == (2, 3, D)
    # each direction uses the padding mask of its key modality
    assert torch.allclose(va, cma.vision_from_lang(v, l, l, key_padding_mask=lm), atol=1e-6)
    assert torch.allclose(la, cma.lang_from_vision(l, v, v, key_padding_mask=vm), atol=1e-6)
    v2, l2 = v.clone(), l.clone()
    v2[0, 3:] += 100.0  # padded vision tokens
    l2[1, 1:] += 100.0  # padded language tokens
    va2, la2 = cma(v2, l2, vm, lm)
    assert torch.allclose(va[:, :3], va2[:, :3], atol=1e-5)  # vision queries: padded lang keys ignored
    assert torch.allclose(la[:, :1], la2[:, :1], atol=1e-5)  # lang queries: padded vision keys ignored


def test_cross_modal_absent_modality_is_finite() -> None:
    cma = CrossModalAttention(D, H, dropout=0.0)
    v, l = torch.randn(2, 4, D), torch.randn(2, 3, D)
    lm = torch.tensor([[0, 0, 0], [1, 1, 1]], dtype=torch.bool)
    va, la = cma(v, l, None, lm)
    assert torch.isfinite(va).all() and torch.isfinite(la).all()
    assert torch.equal(va[0], torch.zeros(4, D))  # nothing to attend to: exact zeros


def _mha_error(match: str, *args, **kwargs) -> None:
    mha = MultiHeadAttention(D, H)
    with pytest.raises(ValueError, match=match):
        mha(*args, **kwargs)


def test_bad_inputs_raise_value_error() -> None:
    x = torch.randn(2, 3, D)
    kv = torch.randn(2, 5, D)
    _mha_error("query: expected a tensor of rank 3", torch.randn(3, D), kv, kv)
    _mha_error("key: expected last dimension 16", x, torch.randn(2, 5, 8), kv)
    _mha_error("query: expected a floating-point tensor", torch.ones(2, 3, D, dtype=torch.long), kv, kv)
    _mha_error("expected one dtype", x, kv.double(), kv.double())
    _mha_error("expected batch size 2", x, torch.randn(4, 5, D), torch.randn(4, 5, D))
    _mha_error("value: expected length 5", x, kv, torch.randn(2, 6, D))
    _mha_error("key_padding_mask: expected shape \\(2, 5\\)", x, kv, kv, key_padding_mask=torch.ones(2, 3).bool())
    _mha_error("key_padding_mask: expected dtype torch.bool", x, kv, kv, key_padding_mask=torch.ones(2, 5))
    _mha_error("mask: expected shape \\(3, 5\\)", x, kv, kv, mask=torch.ones(5, 3, dtype=torch.bool))
    _mha_error("mask: expected shape", x, kv, kv, mask=torch.ones(3, dtype=torch.bool))
    _mha_error("mask: expected shape \\(2, 4, 3, 5\\)", x, kv, kv, mask=torch.ones(2, 2, 3, 5, dtype=torch.bool))
    _mha_error("query: expected a tensor on device cpu", torch.empty(2, 3, D, device="meta"), kv, kv)
    with pytest.raises(ValueError, match="multiple of num_heads"):
        MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match="lang_features: expected last dimension"):
        CrossModalAttention(D, H)(x, torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="lang_mask: expected shape \\(2, 5\\)"):
        CrossModalAttention(D, H)(x, kv, lang_mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="x: expected last dimension"):
        FeedForward(D, 8)(torch.randn(2, 8))


# ---------------------------------------------------------------- chapter-compatible masks and state dicts
def _brute_force(mha: MultiHeadAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 keep: torch.Tensor) -> torch.Tensor:
    """softmax(QK^T / sqrt(hd) masked where ``keep`` (broadcastable to (B, H, Lq, Lk)) is False) V, then out_proj."""
    d, b, lq, lk = D, q.shape[0], q.shape[1], k.shape[1]
    w, bias = mha.in_proj_weight, mha.in_proj_bias
    qh = F.linear(q, w[:d], bias[:d]).view(b, lq, H, D // H).transpose(1, 2)  # (B, H, Lq, hd)
    kh = F.linear(k, w[d : 2 * d], bias[d : 2 * d]).view(b, lk, H, D // H).transpose(1, 2)
    vh = F.linear(v, w[2 * d :], bias[2 * d :]).view(b, lk, H, D // H).transpose(1, 2)
    scores = (qh @ kh.transpose(-1, -2)) / math.sqrt(D // H)  # (B, H, Lq, Lk)
    att = scores.masked_fill(~keep.bool(), float("-inf")).softmax(-1)
    return mha.out_proj((att @ vh).transpose(1, 2).reshape(b, lq, D))


BROADCAST_SHAPES = {
    "B1QK": lambda b, lq, lk: (b, 1, lq, lk),  # the chapter's per-sample mask, shared by the heads
    "B11K": lambda b, lq, lk: (b, 1, 1, lk),  # padding mask in the chapter's / common 4-D form
    "11QK": lambda b, lq, lk: (1, 1, lq, lk),
    "1HQK": lambda b, lq, lk: (1, H, lq, lk),
    "QK": lambda b, lq, lk: (lq, lk),
    "1K": lambda b, lq, lk: (1, lk),
    "B1K": lambda b, lq, lk: (b, 1, lk),
}


@pytest.mark.parametrize("shape", list(BROADCAST_SHAPES))
@pytest.mark.parametrize("dtype", [torch.bool, torch.long, torch.uint8])
@pytest.mark.parametrize("self_attn", [True, False])
def test_broadcast_masks_match_brute_force(shape: str, dtype: torch.dtype, self_attn: bool) -> None:
    """Forward, input and parameter gradients against a brute-force masked softmax (fp32, atol 1e-5, rtol 1e-4).
    Integer masks follow the chapter: nonzero = may attend (``masked_fill(mask == 0, -inf)``)."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, dropout=0.0)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    g = torch.Generator().manual_seed(2)
    b, lq = 3, 4
    lk = lq if self_attn else 6
    q = torch.randn(b, lq, D, generator=g, requires_grad=True)
    kv = q if self_attn else torch.randn(b, lk, D, generator=g, requires_grad=True)
    keep = torch.rand(*BROADCAST_SHAPES[shape](b, lq, lk), generator=g) > 0.4
    keep[..., 0] = True  # every query keeps a key (the brute force gives NaN otherwise)
    out = mha(q, kv, kv, mask=keep.to(dtype))
    ref = _brute_force(mha, q, kv, kv, keep if keep.dim() != 3 else keep[:, None])
    assert out.shape == (b, lq, D)
    _assert_close(out, ref, "forward")
    w = torch.randn(b, lq, D, generator=g)
    inputs = [q] if self_attn else [q, kv]
    g_ours = torch.autograd.grad((out * w).sum(), inputs + list(mha.parameters()))
    g_ref = torch.autograd.grad((ref * w).sum(), inputs + list(mha.parameters()))
    for i, (a, r) in enumerate(zip(g_ours, g_ref)):
        _assert_close(a, r, f"gradient #{i}")


def test_b11k_mask_equals_key_padding_mask_and_empty_rows_are_zero() -> None:
    torch.manual_seed(0)
    mha = MultiHeadAttention(D, H, dropout=0.0)
    q, kv = torch.randn(3, 4, D), torch.randn(3, 6, D)
    kpm = torch.rand(3, 6) > 0.3
    kpm[:, 0] = True
    kpm[2] = False  # sample 2: nothing to attend to
    out = mha(q, kv, kv, mask=kpm[:, None, None, :])
    assert torch.allclose(out, mha(q, kv, kv, key_padding_mask=kpm), atol=1e-6)
    assert torch.equal(out[2], torch.zeros(4, D))  # zeros, not the chapter's NaN
    both = mha(q, kv, kv, mask=kpm[:, None, None, :].long(), key_padding_mask=kpm)  # masks combine (AND)
    assert torch.allclose(both, out, atol=1e-6)


def test_bad_mask_shapes_name_expected_and_got() -> None:
    x, kv = torch.randn(2, 3, D), torch.randn(2, 5, D)
    _mha_error(r"mask: expected shape \(2, 4, 3, 5\) \(B, H, Lq, Lk\).*got \(2, 2, 3, 5\)", x, kv, kv,
               mask=torch.ones(2, 2, 3, 5, dtype=torch.bool))
    _mha_error(r"mask: expected shape \(2, 4, 3, 5\).*got \(2, 1, 1, 4\)", x, kv, kv,
               mask=torch.ones(2, 1, 1, 4, dtype=torch.bool))  # Lk never broadcasts
    _mha_error(r"mask: expected shape \(2, 3, 5\) \(B, Lq, Lk\).*got \(3, 3, 5\)", x, kv, kv,
               mask=torch.ones(3, 3, 5, dtype=torch.bool))
    _mha_error(r"mask: expected shape \(Lq, Lk\)=\(3, 5\).*got \(1, 1, 1, 1, 5\)", x, kv, kv,
               mask=torch.ones(1, 1, 1, 1, 5, dtype=torch.bool))
    _mha_error(r"mask: expected dtype torch.bool .* got torch.float32", x, kv, kv, mask=torch.ones(3, 5))
    _mha_error("mask: expected a boolean torch.Tensor, got list", x, kv, kv, mask=[[1] * 5] * 3)


class ChapterMHA(nn.Module):
    """The chapter's MultiHeadAttention (separate q/k/v/out Linear layers, ``masked_fill(mask == 0, -inf)``),
    written for this test to produce its state dict and expected outputs."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.h, self.hd = num_heads, d_model // num_heads
        self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.v_proj, self.out_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b = query.shape[0]

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, -1, self.h, self.hd).transpose(1, 2)  # (B, H, L, hd)

        q, k, v = heads(self.q_proj(query)), heads(self.k_proj(key)), heads(self.v_proj(value))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.hd)
        if mask is not None:
            scores = scores.masked_fill(mask == 0, float("-inf"))
        out = self.dropout(scores.softmax(-1)) @ v  # (B, H, Lq, hd)
        return self.out_proj(out.transpose(1, 2).reshape(b, -1, self.h * self.hd))


def test_chapter_state_dict_loads_and_gives_the_chapters_outputs() -> None:
    torch.manual_seed(0)
    chap = ChapterMHA(D, H).eval()
    ours = MultiHeadAttention(D, H).eval()
    result = ours.load_state_dict(chap.state_dict())  # strict: every key mapped, none left over
    assert not result.missing_keys and not result.unexpected_keys
    g = torch.Generator().manual_seed(3)
    x, kv = torch.randn(2, 5, D, generator=g), torch.randn(2, 7, D, generator=g)
    keep = (torch.rand(2, 1, 5, 7, generator=g) > 0.3).long()
    keep[..., 0] = 1
    pad = torch.ones(2, 1, 1, 7, dtype=torch.long)
    pad[1, ..., 4:] = 0
    with torch.no_grad():
        for q, k, mask in [(x, x, None), (x, kv, None), (x, kv, keep), (x, kv, pad), (x, x, keep[..., :5])]:
            assert torch.allclose(ours(q, k, k, mask=mask), chap(q, k, k, mask=mask), atol=1e-5)
    # nested under a prefix, as inside a chapter model
    outer_chap, outer_ours = nn.ModuleDict({"attn": chap}), nn.ModuleDict({"attn": MultiHeadAttention(D, H)})
    outer_ours.load_state_dict(outer_chap.state_dict())
    assert torch.equal(outer_ours["attn"].in_proj_weight, ours.in_proj_weight)


def test_own_state_dict_still_loads_and_mismatches_are_reported() -> None:
    torch.manual_seed(0)
    a, b = MultiHeadAttention(D, H), MultiHeadAttention(D, H)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert set(a.state_dict()) == {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"}
    with pytest.raises(RuntimeError, match="q_proj.bias"):  # no biases here to load the chapter's into
        MultiHeadAttention(D, H, bias=False).load_state_dict(ChapterMHA(D, H).state_dict())
    partial = {k: v for k, v in ChapterMHA(D, H).state_dict().items() if not k.startswith("v_proj")}
    with pytest.raises(RuntimeError, match="in_proj_weight"):  # incomplete: left as is, reported
        MultiHeadAttention(D, H).load_state_dict(partial)
