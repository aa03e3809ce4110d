"""Pixel vision pieces: the convolutional stem, several cameras as token groups, random-shift augmentation."""

import pytest
import torch

from vlafoundry.nn.augment import RandomShift, random_shift
from vlafoundry.nn.vision import ConvStem, VisionEncoder


def test_conv_stem_token_grid_matches_patch_embedding_and_every_parameter_learns():
    torch.manual_seed(0)
    patch = VisionEncoder(3, 8, 32)
    conv = VisionEncoder(3, 8, 32, stem="conv")
    x = torch.randint(0, 256, (2, 56, 40, 3), dtype=torch.uint8)
    assert patch(x).shape == conv(x).shape == (2, 1 + 7 * 5, 32)
    conv(x).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in conv.parameters())


def test_conv_stem_needs_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        ConvStem(3, 6, 32)
    with pytest.raises(ValueError, match="stem"):
        VisionEncoder(3, 8, 32, stem="resnet")


def test_cameras_are_token_groups_equal_to_encoding_each_camera_plus_its_embedding():
    torch.manual_seed(0)
    enc = VisionEncoder(3, 4, 16, num_cameras=2).eval()
    x = torch.randint(0, 256, (3, 2, 8, 12, 3), dtype=torch.uint8)
    out = enc(x)  # (B, K*(1+N), D)
    n = 1 + 2 * 3
    assert out.shape == (3, 2 * n, 16) and enc.num_tokens(8, 12) == 2 * n
    # brute force: the single-camera path with the same weights, plus each camera's embedding
    single = VisionEncoder(3, 4, 16).eval()
    single.load_state_dict({k: v for k, v in enc.state_dict().items() if k != "camera_embed"})
    for k in range(2):
        ref = single(x[:, k]) + enc.camera_embed[k]
        torch.testing.assert_close(out[:, k * n:(k + 1) * n], ref, rtol=1e-5, atol=1e-6)
    # the two cameras' tokens differ in their embedding even for identical frames
    same = enc(x[:, :1].expand(-1, 2, -1, -1, -1).contiguous())
    assert not torch.allclose(same[:, :n], same[:, n:])
    torch.testing.assert_close(enc.positions(8, 12, out.device, out.dtype)[0, n:] - enc.positions(8, 12, out.device,
                               out.dtype)[0, :n], (enc.camera_embed[1] - enc.camera_embed[0]).expand(n, -1))


def test_camera_count_mismatch_is_named():
    enc = VisionEncoder(3, 4, 16, num_cameras=2)
    with pytest.raises(ValueError, match="expected 2 cameras"):
        enc(torch.zeros(1, 3, 8, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError):
        enc(torch.zeros(1, 8, 8, 3, dtype=torch.uint8))


def test_random_shift_moves_content_by_at_most_pad_and_shares_the_offset_within_a_sample():
    g = torch.Generator().manual_seed(0)
    h = w = 16
    # every pixel encodes its own (row, col): the output tells where each pixel came from
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    frame = torch.stack([rows, cols, torch.zeros_like(rows)], -1).to(torch.uint8)  # (H, W, 3)
    x = frame.expand(64, 2, 3, h, w, 3).contiguous()  # (B, T, K, H, W, C)
    out = random_shift(x, 3, generator=g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    dy = out[..., h // 2, w // 2, 0].long() - h // 2  # (B, T, K) interior pixel: the offset itself
    dx = out[..., h // 2, w // 2, 1].long() - w // 2
    assert dy.abs().max() <= 3 and dx.abs().max() <= 3
    assert (dy == dy[:, :1, :1]).all() and (dx == dx[:, :1, :1]).all()  # one offset per sample
    assert len(set(zip(dy[:, 0, 0].tolist(), dx[:, 0, 0].tolist()))) > 10  # samples differ
    # borders replicate: every output value is an in-range index shifted and clamped
    b = 0
    exp_r = (torch.arange(h) + dy[b, 0, 0]).clamp(0, h - 1)
    exp_c = (torch.arange(w) + dx[b, 0, 0]).clamp(0, w - 1)
    assert torch.equal(out[b, 0, 0, :, 0, 0].long(), exp_r) and torch.equal(out[b, 0, 0, 0, :, 1].long(), exp_c)
    # independent=1: each camera (last leading axis) draws its own offset, its T frames still share it
    out = random_shift(x, 3, generator=torch.Generator().manual_seed(1), independent=1)
    dy = out[..., h // 2, w // 2, 0].long() - h // 2  # (B, T, K)
    dx = out[..., h // 2, w // 2, 1].long() - w // 2
    assert (dy == dy[:, :1]).all() and (dx == dx[:, :1]).all()  # shared over T
    differ = ((dy[:, 0, 0] != dy[:, 0, 1]) | (dx[:, 0, 0] != dx[:, 0, 1])).float().mean()
    assert differ > 0.7, differ  # two cameras of a sample: same offset with probability 1/49
    with pytest.raises(ValueError, match=r"independent: expected an integer in \[0, 2\]"):
        random_shift(x, 3, independent=3)


def test_random_shift_zero_pad_and_eval_mode_are_identity_and_bad_input_is_named():
    x = torch.randint(0, 256, (4, 8, 8, 3), dtype=torch.uint8)
    assert random_shift(x, 0) is x
    mod = RandomShift(2).eval()
    assert mod(x) is x
    assert not torch.equal(RandomShift(2).train()(x.repeat(16, 1, 1, 1)), x.repeat(16, 1, 1, 1))
    with pytest.raises(ValueError, match="at least 4 dims"):
        random_shift(torch.zeros(8, 8, 3, dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="pad"):
        random_shift(x, -1)


def test_norm_layer_normalises_each_patch_token_before_positions():
    torch.manual_seed(0)
    enc = VisionEncoder(3, 4, 16, norm_layer=torch.nn.LayerNorm).eval()
    x = torch.rand(2, 3, 8, 8) * 0.3  # dark pixels
    tokens = enc(x)[:, 1:] - enc.positions(8, 8, x.device, x.dtype)[:, 1:]  # (B, N, D) the patches' content
    torch.testing.assert_close(tokens.std(-1, unbiased=False), torch.ones(2, 4), atol=1e-3, rtol=0)
