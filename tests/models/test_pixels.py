"""VLAPolicy from camera pixels: one or several cameras, conv stem, random shift, all objectives, acting, round trip."""

import numpy as np
import pytest
import torch

from vlafoundry.models import ModalityDropoutConfig, PolicyConfig, PolicySpec, VLAPolicy, load_policy
from vlafoundry.nn.language import TextTokenizer
from vlafoundry.train.config import LossConfig

TASKS = ["push the puck to the goal", "open the drawer"]


def pixel_spec(cams=2, size=16):
    shape = [size, size, 3] if cams == 1 else [cams, size, size, 3]
    return PolicySpec(env="metaworld/push", action_type="continuous", action_dim=4, action_low=[-1] * 4,
                      action_high=[1] * 4, state_dim=4, image_shape=shape, state_mean=[0.0] * 4,
                      state_std=[1.0] * 4)


def pixel_batch(spec, b=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = spec.image_shape
    img = torch.randint(0, 256, (b, 1, *shape), generator=g, dtype=torch.uint8)
    ids = torch.randint(0, 2, (b,), generator=g)
    # a rule only the pixels give away: the action follows the first camera's mean red intensity
    red = img[:, 0, ..., 0].float().flatten(1).mean(1, keepdim=True) / 255.0  # (B, 1)
    act = torch.tanh(4 * (red - 0.5)).expand(b, 4).unsqueeze(1).repeat(1, 2, 1)  # (B, K=2, A)
    return {"image": img, "state": torch.randn(b, 1, 4, generator=g), "obs_mask": torch.ones(b, 1, dtype=torch.bool),
            "instruction": [TASKS[i] for i in ids], "instruction_id": ids, "action": act.float(),
            "action_mask": torch.ones(b, 2, dtype=torch.bool)}


def make(spec, **kw):
    torch.manual_seed(0)
    cfg = PolicyConfig(vision="patch", patch_size=8, d_model=32, num_heads=4, d_ff=64, num_layers=1, head="continuous",
                       chunk=2, **kw)
    return VLAPolicy(cfg, spec, TextTokenizer.train(TASKS, kind="word"))


@pytest.mark.parametrize("cams,stem,norm", [(1, "patch", False), (2, "patch", True), (2, "conv", False)])
def test_every_parameter_learns_with_all_objectives(cams, stem, norm):
    spec = pixel_spec(cams)
    md = ModalityDropoutConfig(image=0.5, instruction=0.5, state=0.5)  # placeholders take part too
    p = make(spec, vision_stem=stem, fusion="early", image_shift=2, vision_layers=1, modality_dropout=md,
             patch_norm=norm)
    assert isinstance(p.vision_encoder.norm, torch.nn.LayerNorm) == norm
    lc = LossConfig(bc=1.0, contrastive=1.0, itm=1.0, mlm=1.0, mrm=1.0)
    loss, metrics = p(pixel_batch(spec), lc)
    loss.backward()
    missing = [n for n, q in p.named_parameters() if q.requires_grad and (q.grad is None or q.grad.abs().sum() == 0)]
    assert not missing, missing
    assert all(torch.isfinite(v) for v in metrics.values())
    assert p.num_image_tokens == cams * (1 + 4)


def test_pixel_policy_learns_a_rule_only_the_image_shows():
    spec = pixel_spec(2)
    p = make(spec, fusion="film", use_state=False)
    opt = torch.optim.AdamW(p.parameters(), lr=3e-3)
    first = None
    for i in range(60):
        loss, _ = p(pixel_batch(spec, b=32, seed=i % 8))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    held = pixel_batch(spec, b=64, seed=100)
    p.eval()
    with torch.no_grad():
        final, _ = p(held)
    assert float(final) < 0.5 * first, (first, float(final))


def test_random_shift_is_training_only_and_acting_is_deterministic(tmp_path):
    spec = pixel_spec(2)
    p = make(spec, image_shift=3).eval()
    obs = {"image": np.random.default_rng(0).integers(0, 256, (3, 2, 16, 16, 3), dtype=np.uint8),
           "state": np.zeros((3, 4), np.float32), "instruction": [TASKS[0]] * 3}
    p.reset()
    a1 = p.select_action(obs)
    p.reset()
    a2 = p.select_action(obs)
    assert np.asarray(a1).shape == (3, 4) and np.allclose(a1, a2)
    p.save_pretrained(tmp_path / "pol")
    q = load_policy(tmp_path / "pol").eval()
    assert q.cfg.image_shift == 3 and q.vision_encoder.num_cameras == 2
    q.reset()
    assert np.allclose(q.select_action(obs), a1, atol=1e-6)


def test_wrong_frames_are_named():
    p = make(pixel_spec(2)).eval()
    obs = {"image": np.zeros((1, 16, 16, 3), np.uint8), "state": np.zeros((1, 4), np.float32),
           "instruction": [TASKS[0]]}
    with pytest.raises(ValueError, match="image"):
        p.select_action(obs)


def test_config_refuses_what_cannot_work():
    with pytest.raises(ValueError, match="model.image_shift"):
        PolicyConfig(vision="grid", image_shift=2)
    with pytest.raises(ValueError, match="model.patch_size"):
        PolicyConfig(vision="patch", vision_stem="conv", patch_size=6)
    with pytest.raises(ValueError, match="model.vision_stem"):
        PolicyConfig(vision="patch", vision_stem="resnet")
    with pytest.raises(ValueError, match="grid"):
        VLAPolicy(PolicyConfig(vision="grid", d_model=32, num_heads=4), pixel_spec(2),
                  TextTokenizer.train(TASKS, kind="word"))
