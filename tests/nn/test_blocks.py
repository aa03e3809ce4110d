"""TransformerEncoderBlock (vs torch.nn.TransformerEncoderLayer), MultimodalTransformerBlock, MultimodalEncoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vlafoundry.nn.blocks import MultimodalEncoder, MultimodalTransformerBlock, TransformerEncoderBlock

D, H, FF = 16, 4, 32


def _copy_from_torch(block: TransformerEncoderBlock, ref: nn.TransformerEncoderLayer) -> None:
    sd = ref.state_dict()
    mapped = {}
    for k, v in sd.items():
        k = k.replace("self_attn.", "attn.")
        k = k.replace("linear1.", "ffn.fn.linear1.").replace("linear2.", "ffn.fn.linear2.")
        mapped[k] = v
    block.load_state_dict(mapped)


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_block_matches_torch_layer(norm_first: bool) -> None:
    torch.manual_seed(0)
    ref = nn.TransformerEncoderLayer(
        D, H, FF, dropout=0.0, activation="gelu", batch_first=True, norm_first=norm_first
    )
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.1 * torch.randn_like(p))  # non-trivial biases / norm affine
    block = TransformerEncoderBlock(D, H, FF, dropout=0.0, norm_first=norm_first)
    _copy_from_torch(block, ref)
    x = torch.randn(3, 6, D, requires_grad=True)
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    out = block(x, mask)
    ref.train()  # avoid torch's inference fast path (nested tensors zero the padded rows)
    expected = ref(x, src_key_padding_mask=~mask)
    assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()
    w = torch.randn_like(out)
    g1 = torch.autograd.grad((out * w).sum(), [x, *block.parameters()])
    g2 = torch.autograd.grad((expected * w).sum(), [x, *ref.parameters()])
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()


class _RecordingFFN(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)
        self.seen_masks: list[torch.Tensor | None] = []

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self.seen_masks.append(mask)
        return self.lin(x)


class _PlainFFN(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.lin = nn.Linear(d_model, d_model)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.lin(x)


def test_ffn_layer_injection_receives_mask() -> None:
    block = TransformerEncoderBlock(D, H, FF, ffn_layer=_RecordingFFN)
    mask = torch.ones(2, 5, dtype=torch.bool)
    block(torch.randn(2, 5, D), mask)
    assert block.ffn.fn.seen_masks[-1] is mask
    plain = TransformerEncoderBlock(D, H, FF, ffn_layer=_PlainFFN)
    plain(torch.randn(2, 5, D), mask)
    assert plain.ffn.fn.calls == 1
    mm = MultimodalTransformerBlock(D, H, FF, ffn_layer=_RecordingFFN)
    vm, lm = torch.ones(2, 4, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)
    mm(torch.randn(2, 4, D), torch.randn(2, 3, D), vm, lm)
    assert mm.vision_ffn.fn.seen_masks[-1] is vm and mm.lang_ffn.fn.seen_masks[-1] is lm


def _inputs(b: int = 3, lv: int = 6, ll: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    v, l = torch.randn(b, lv, D, generator=g), torch.randn(b, ll, D, generator=g)
    vm = torch.ones(b, lv, dtype=torch.bool)
    lm = torch.ones(b, ll, dtype=torch.bool)
    vm[0, lv - 2 :] = False
    lm[1, ll - 1 :] = False
    return v, l, vm, lm


@pytest.mark.parametrize("norm_first", [True, False])
def test_multimodal_block_masks_are_honoured(norm_first: bool) -> None:
    torch.manual_seed(0)
    blk = MultimodalTransformerBlock(D, H, FF, dropout=0.0, norm_first=norm_first).eval()
    v, l, vm, lm = _inputs()  # Lv=6 != Ll=4
    out_v, out_l = blk(v, l, vm, lm)
    assert out_v.shape == v.shape and out_l.shape == l.shape
    v2, l2 = v.clone(), l.clone()
    v2[0, -2:] = 50 * torch.randn(2, D)  # padded vision tokens of sample 0
    l2[1, -1:] = 50 * torch.randn(1, D)  # padded language token of sample 1
    out_v2, out_l2 = blk(v2, l2, vm, lm)
    assert torch.allclose(out_v[vm], out_v2[vm], atol=1e-5)
    assert torch.allclose(out_l[lm], out_l2[lm], atol=1e-5)


def test_multimodal_block_prenorm_formula_with_absent_language() -> None:
    """A sample with no language: vision gets self-attention + (zero) cross-attention + FFN, nothing else."""
    torch.manual_seed(0)
    blk = MultimodalTransformerBlock(D, H, FF, dropout=0.0).eval()
    v, l, vm, _ = _inputs()
    lm = torch.zeros(3, 4, dtype=torch.bool)
    out_v, out_l = blk(v, l, vm, lm)
    h = blk.vision_norm1(v)
    ref = v + blk.vision_self_attn(h, h, h, key_padding_mask=vm)
    ref = ref + blk.vision_ffn.fn(blk.vision_norm3(ref))
    assert torch.allclose(out_v, ref, atol=1e-5)
    assert torch.isfinite(out_l).all()


def test_multimodal_block_postnorm_formula() -> None:
    torch.manual_seed(0)
    blk = MultimodalTransformerBlock(D, H, FF, dropout=0.0, norm_first=False).eval()
    v, l, vm, lm = _inputs()
    out_v, out_l = blk(v, l, vm, lm)
    sv = blk.vision_norm1(v + blk.vision_self_attn(v, v, v, key_padding_mask=vm))
    sl = blk.lang_norm1(l + blk.lang_self_attn(l, l, l, key_padding_mask=lm))
    cv = blk.vision_norm2(sv + blk.cross_attn.vision_from_lang(sv, sl, sl, key_padding_mask=lm))
    cl = blk.lang_norm2(sl + blk.cross_attn.lang_from_vision(sl, sv, sv, key_padding_mask=vm))
    assert torch.allclose(out_v, blk.vision_norm3(cv + blk.vision_ffn.fn(cv)), atol=1e-5)
    assert torch.allclose(out_l, blk.lang_norm3(cl + blk.lang_ffn.fn(cl)), atol=1e-5)


def test_modalities_have_separate_weights() -> None:
    blk = MultimodalTransformerBlock(D, H, FF)
    ids = {}
    for name, p in blk.named_parameters():
        assert id(p) not in ids, f"{name} shares a tensor with {ids.get(id(p))}"
        ids[id(p)] = name
    assert len([n for n in ids.values() if "norm" in n and n.endswith("weight")]) == 6


@pytest.mark.parametrize("norm_first", [True, False])
def test_every_parameter_gets_a_gradient(norm_first: bool) -> None:
    torch.manual_seed(0)
    enc = MultimodalEncoder(D, 2, H, FF, norm_first=norm_first)
    v, l, vm, lm = _inputs()
    out_v, out_l = enc(v, l, vm, lm)
    (out_v.pow(2).sum() + out_l.pow(2).sum()).backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    blk = TransformerEncoderBlock(D, H, FF, norm_first=norm_first)
    blk(torch.randn(2, 5, D)).pow(2).sum().backward()
    for name, p in blk.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_encoder_final_norms_and_absent_samples() -> None:
    assert isinstance(MultimodalEncoder(D, 1, H, FF).vision_norm, nn.LayerNorm)
    assert isinstance(MultimodalEncoder(D, 1, H, FF, norm_first=False).lang_norm, nn.Identity)
    enc = MultimodalEncoder(D, 2, H, FF, dropout=0.0, norm_layer=nn.RMSNorm)
    assert isinstance(enc.vision_norm, nn.RMSNorm)
    v, l, vm, lm = _inputs()
    vm[2] = False  # sample 2 has no vision
    lm[0] = False  # sample 0 has no language
    out_v, out_l = enc(v.requires_grad_(), l, vm, lm)
    assert torch.isfinite(out_v).all() and torch.isfinite(out_l).all()
    out_v.sum().backward()
    assert torch.isfinite(v.grad).all()


def test_bad_inputs_raise_value_error() -> None:
    blk = MultimodalTransformerBlock(D, H, FF)
    v, l, vm, lm = _inputs()
    with pytest.raises(ValueError, match="expected one batch size"):
        blk(v, l[:2])
    with pytest.raises(ValueError, match="visual_mask: expected shape \\(3, 6\\)"):
        blk(v, l, lm, vm)
    with pytest.raises(ValueError, match="lang_input: expected last dimension 16"):
        blk(v, torch.randn(3, 4, 8))
    with pytest.raises(ValueError, match="x: expected a tensor of rank 3"):
        TransformerEncoderBlock(D, H, FF)(torch.randn(5, D))
    with pytest.raises(ValueError, match="mask: expected dtype torch.bool"):
        TransformerEncoderBlock(D, H, FF)(torch.randn(2, 5, D), torch.ones(2, 5))
    with pytest.raises(ValueError, match="num_layers"):
        MultimodalEncoder(D, 0, H, FF)
