from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vlafoundry.nn.vision import SymbolicGridEncoder, VisionEncoder, get_2d_sincos_pos_embed


def reference_2d_sincos(dim: int, gh: int, gw: int) -> np.ndarray:
    """Loop-by-loop MAE formula: channels [0, D/2) encode the row, [D/2, D) the column; each half is
    [sin(p * w_k) for k] + [cos(p * w_k) for k] with w_k = 10000 ** (-k / (D/4))."""
    quarter = dim // 4
    out = np.zeros((gh * gw, dim))
    for r in range(gh):
        for c in range(gw):
            for k in range(quarter):
                w = 1.0 / (10000.0 ** (k / quarter))
                out[r * gw + c, k] = math.sin(r * w)
                out[r * gw + c, quarter + k] = math.cos(r * w)
                out[r * gw + c, 2 * quarter + k] = math.sin(c * w)
                out[r * gw + c, 3 * quarter + k] = math.cos(c * w)
    return out


@pytest.mark.parametrize("dim,gh,gw", [(8, 2, 2), (16, 3, 5), (32, 7, 7), (12, 4, 1)])
def test_2d_sincos_matches_reference(dim, gh, gw):
    got = get_2d_sincos_pos_embed(dim, gh, gw)
    assert got.shape == (gh * gw, dim)
    np.testing.assert_allclose(got, reference_2d_sincos(dim, gh, gw), atol=1e-6, rtol=0)


def test_2d_sincos_cls_slot_and_non_square():
    got = get_2d_sincos_pos_embed(16, 3, 5, cls_token=True)
    assert got.shape == (1 + 15, 16)
    assert np.all(got[0] == 0)
    np.testing.assert_allclose(got[1:], reference_2d_sincos(16, 3, 5), atol=1e-6, rtol=0)
    # non-square grids are not transposes of each other
    assert not np.allclose(get_2d_sincos_pos_embed(16, 3, 5)[:15], get_2d_sincos_pos_embed(16, 5, 3)[:15])


def test_2d_sincos_bad_dim():
    with pytest.raises(ValueError, match="multiple of 4"):
        get_2d_sincos_pos_embed(6, 2, 2)


@pytest.mark.parametrize("hw", [(16, 16), (8, 24)])
def test_vision_encoder_forward_matches_reference(hw):
    torch.manual_seed(0)
    enc = VisionEncoder(input_channels=3, patch_size=8, d_model=16).eval()
    x = torch.randn(2, 3, *hw)
    out = enc(x)
    gh, gw = hw[0] // 8, hw[1] // 8
    assert out.shape == (2, 1 + gh * gw, 16)
    patches = F.conv2d(x, enc.conv_proj.weight, enc.conv_proj.bias, stride=8).flatten(2).transpose(1, 2)
    pos = torch.from_numpy(reference_2d_sincos(16, gh, gw)).float()
    torch.testing.assert_close(out[:, 1:], patches + pos, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 0], enc.cls_token[0, 0].expand(2, -1), atol=1e-6, rtol=0)
    # gradients agree with the reference expression
    g = torch.randn_like(out)
    ref = torch.cat([enc.cls_token.expand(2, -1, -1), patches], dim=1)
    params = [enc.conv_proj.weight, enc.conv_proj.bias, enc.cls_token]
    got_grads = torch.autograd.grad((out * g).sum(), params)
    ref_grads = torch.autograd.grad((ref * g).sum(), params)
    for a, b in zip(got_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_vision_encoder_cache_per_grid_size_and_dtype():
    enc = VisionEncoder(3, 4, 8)
    a = enc(torch.randn(1, 3, 8, 8))
    b = enc(torch.randn(3, 3, 12, 8))
    assert a.shape == (1, 5, 8) and b.shape == (3, 7, 8)
    assert enc.pos_cache.misses == 2 and len(enc.pos_cache) == 2
    enc(torch.randn(5, 3, 8, 8))
    assert enc.pos_cache.misses == 2  # reused
    enc.double()(torch.randn(1, 3, 8, 8, dtype=torch.float64))
    assert enc.pos_cache.misses == 3
    assert (2, 2, torch.device("cpu"), torch.float64) in enc.pos_cache.keys()
    assert not any("pos" in k for k in enc.state_dict())


def test_vision_encoder_positions_follow_device():
    enc = VisionEncoder(3, 4, 8)
    enc(torch.randn(1, 3, 8, 8))
    enc.to("meta")
    out = enc(torch.randn(2, 3, 8, 8, device="meta"))
    assert out.device.type == "meta" and out.shape == (2, 5, 8)
    assert any(k[2].type == "meta" for k in enc.pos_cache.keys())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vision_encoder_cuda():
    enc = VisionEncoder(3, 4, 8)
    cpu = enc(torch.ones(1, 3, 8, 8))
    enc.cuda()
    gpu = enc(torch.ones(1, 3, 8, 8, device="cuda"))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-5)


def test_vision_encoder_uint8_channels_last():
    torch.manual_seed(0)
    enc = VisionEncoder(3, 4, 8)
    img = torch.randint(0, 256, (2, 8, 12, 3), dtype=torch.uint8)
    ref = enc(img.permute(0, 3, 1, 2).float() / 255.0)
    torch.testing.assert_close(enc(img), ref)
    torch.testing.assert_close(enc(img, channels_last_uint8=True), ref)
    with pytest.raises(ValueError, match="uint8"):
        enc(torch.randn(2, 8, 12, 3), channels_last_uint8=True)


def test_vision_encoder_bad_inputs():
    enc = VisionEncoder(3, 4, 8)
    with pytest.raises(ValueError, match="patch_size"):
        enc(torch.randn(1, 3, 10, 8))
    with pytest.raises(ValueError, match="channels"):
        enc(torch.randn(1, 1, 8, 8))
    with pytest.raises(ValueError, match="rank"):
        enc(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="floating"):
        enc(torch.ones(1, 3, 8, 8, dtype=torch.int64), channels_last_uint8=False)
    with pytest.raises(ValueError, match="d_model"):
        VisionEncoder(3, 4, 10)


def test_vision_encoder_all_params_get_grad():
    enc = VisionEncoder(3, 4, 8, dropout=0.1)
    enc(torch.randn(2, 3, 8, 8)).square().sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def _grid(b: int, h: int = 7, w: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack(
        [torch.randint(0, n, (b, h, w), generator=g) for n in (11, 6, 3)], dim=-1
    ).to(torch.uint8)  # (B, H, W, 3)


def test_symbolic_grid_encoder_matches_reference():
    torch.manual_seed(0)
    enc = SymbolicGridEncoder(d_model=16)
    grid = _grid(3)
    out = enc(grid)
    assert out.shape == (3, 50, 16)
    g = grid.long()
    ref = enc.object_embed.weight[g[..., 0]] + enc.color_embed.weight[g[..., 1]] + enc.state_embed.weight[g[..., 2]]
    ref = ref.reshape(3, 49, 16) + torch.from_numpy(reference_2d_sincos(16, 7, 7)).float()
    torch.testing.assert_close(out[:, 1:], ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 0], enc.cls_token[0, 0].expand(3, -1))
    # numpy input (as environments give it) and any batch size
    assert enc(grid[:1].numpy()).shape == (1, 50, 16)


def test_symbolic_grid_encoder_no_cls_and_non_square():
    enc = SymbolicGridEncoder(d_model=8, cls_token=False)
    assert enc(_grid(2, 5, 9)).shape == (2, 45, 8)
    assert enc(_grid(1)).shape == (1, 49, 8)
    assert enc.pos_cache.misses == 2


@pytest.mark.parametrize(
    "channel,value,match", [(0, 11, "object"), (1, 6, "colour"), (2, 3, "state"), (0, -1, "object")]
)
def test_symbolic_grid_encoder_index_validation(channel, value, match):
    enc = SymbolicGridEncoder(d_model=8)
    grid = _grid(2).long()
    grid[1, 3, 4, channel] = value
    with pytest.raises(ValueError, match=match):
        enc(grid)


def test_symbolic_grid_encoder_bad_inputs_and_grads():
    enc = SymbolicGridEncoder(d_model=8)
    with pytest.raises(ValueError, match="integer"):
        enc(torch.zeros(1, 7, 7, 3))
    with pytest.raises(ValueError, match="last dimension"):
        enc(torch.zeros(1, 7, 7, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="rank"):
        enc(torch.zeros(7, 7, 3, dtype=torch.long))
    # every table row used at least once -> every parameter gets a gradient
    grid = torch.zeros(1, 11, 1, 3, dtype=torch.long)
    grid[0, :, 0, 0] = torch.arange(11)
    grid[0, :6, 0, 1] = torch.arange(6)
    grid[0, :3, 0, 2] = torch.arange(3)
    enc(grid).square().sum().backward()
    for name, p in enc.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
