"""Alignment pretraining of VLAPolicy: what the image side of the contrastive loss sees, which steps it aligns
(``loss.align_last``), and ITM through the fusion module. Measured on real data by ``bench/alignment.py``."""

import numpy as np
import pytest
import torch

from vlafoundry.config import ConfigError
from vlafoundry.models import PolicyConfig, PolicySpec, VLAPolicy
from vlafoundry.nn.language import TextTokenizer
from vlafoundry.train.config import LossConfig

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0)}
INSTR = [f"go to the {c} tile" for c in COLORS]


def spec(size=24):
    return PolicySpec(env="babyai/GoToLocal", action_type="discrete", action_dim=1, num_actions=7, state_dim=4,
                      image_shape=[size, size, 3], state_mean=[0.25] * 4, state_std=[0.43] * 4)


def make(**kw):
    torch.manual_seed(0)
    base = {"vision": "patch", "patch_size": 8, "d_model": 32, "num_heads": 4, "d_ff": 64, "num_layers": 1,
            "vision_layers": 0, "fusion": "film", "use_state": False}
    cfg = PolicyConfig(**{**base, **kw})
    return VLAPolicy(cfg, spec(), TextTokenizer.train(INSTR, kind="word"))


def tile_batch(b=32, seed=0, size=24):
    """One coloured 8 px tile at a random place on a grey-bordered black frame; the instruction names its colour:
    the frames differ only in a small part, as an egocentric BabyAI frame differs from another."""
    g = np.random.default_rng(seed)
    img = np.zeros((b, 1, size, size, 3), dtype=np.uint8)
    img[:, :, :, :2] = img[:, :, :2] = 100  # a constant part (walls)
    ids = g.integers(0, len(COLORS), b)
    cells = size // 8
    for i in range(b):
        r, c = g.integers(0, cells, 2)
        img[i, 0, r * 8 + 2:r * 8 + 6, c * 8 + 2:c * 8 + 6] = list(COLORS.values())[ids[i]]
    return {"image": torch.as_tensor(img), "state": torch.zeros(b, 1, 4),
            "obs_mask": torch.ones(b, 1, dtype=torch.bool), "instruction": [INSTR[i] for i in ids], "instruction_id": torch.as_tensor(ids),
            "action": torch.zeros(b, 1, dtype=torch.long), "action_mask": torch.ones(b, 1, dtype=torch.bool)}


def test_pooled_image_is_not_one_constant_vector():
    """The fixed position terms are the same for every frame; pooled with the tokens they made the image side of
    the alignment ~one constant vector (every pair of frames at cosine ~1), which L2 normalisation cannot undo."""
    p = make().eval()
    with torch.no_grad():
        b = p.prepare(tile_batch(16))
        enc = p.encode(b)
        pooled = p.pooled_observation(enc)  # (B, D)
        cos = torch.nn.functional.cosine_similarity(pooled[:, None], pooled[None], dim=-1)  # (B, B)
        with_positions = torch.nn.functional.cosine_similarity(
            (pooled + enc["extras"]["positions"].mean(1))[:, None], (pooled + enc["extras"]["positions"].mean(1))[None],
            dim=-1)
    off = ~torch.eye(16, dtype=torch.bool)
    spread, old_spread = 1 - cos[off].mean(), 1 - with_positions[off].mean()  # what the old pooling gave
    assert old_spread < 0.05 and spread > 5 * old_spread, (float(spread), float(old_spread))
    assert enc["extras"]["positions"].shape == (1, enc["vision"].shape[1], 32)


def test_contrastive_aligns_pixels_without_vision_layers():
    """With model.vision_layers 0 (the BabyAI RGB preset) the image side is a mean of patch embeddings: the
    contrastive loss must come close to its floor on a rule only a small part of the 56x56 frame shows (with the
    position terms in the mean it stays far from it: 2.6 against a floor of 2.1 and a chance level of 3.5)."""
    torch.manual_seed(0)
    cfg = PolicyConfig(vision="patch", patch_size=8, d_model=64, num_heads=4, d_ff=64, num_layers=1, vision_layers=0,
                       fusion="film", use_state=False)
    p = VLAPolicy(cfg, spec(56), TextTokenizer.train(INSTR, kind="word"))
    lc = LossConfig(bc=0.0, contrastive=1.0)
    opt = torch.optim.AdamW(p.parameters(), lr=1e-3)
    losses, floors = [], []
    for i in range(60):
        batch = tile_batch(32, seed=i % 16, size=56)
        loss, m = p(batch, lc)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ids = batch["instruction_id"]
        losses.append(float(m["contrastive"]))
        floors.append(float((ids[:, None] == ids[None]).sum(1).float().log().mean()))
    chance, floor, last = np.log(32), np.mean(floors[-10:]), np.mean(losses[-10:])
    assert last - floor < 0.3 * (chance - floor), (last, floor, chance)


def test_itm_trains_and_reports_balanced_accuracy():
    p = make()
    loss, m = p(tile_batch(8), LossConfig(bc=0.0, contrastive=1.0, itm=1.0))
    loss.backward()
    assert 0.0 <= float(m["itm_acc"]) <= 1.0
    for mod in (p.pretrain_heads.itm_head, p.vision_encoder, p.text_encoder):
        assert any(q.grad is not None and q.grad.abs().sum() > 0 for q in mod.parameters())


# ---------------------------------------------------------------------------------------- loss.align_last


def test_align_last_is_validated():
    assert LossConfig(align_last=2).align_last == 2
    for bad in (-1, 1.5):
        with pytest.raises(ConfigError, match="align_last"):
            LossConfig(align_last=bad)


def test_alignment_rows_from_episodes_and_from_steps_left():
    p = make()
    lc = LossConfig(bc=0.0, contrastive=1.0, align_last=1)
    assert p.alignment_rows({"seq": None}, LossConfig()) is None
    seq = (torch.tensor([0, 0, 0, 1, 1]), torch.tensor([0, 1, 2, 0, 1]), 2, 3)  # episodes of 3 and 2 steps
    assert p.alignment_rows({"seq": seq}, lc).tolist() == [False, False, True, False, True]
    two = LossConfig(bc=0.0, contrastive=1.0, align_last=2)
    assert p.alignment_rows({"seq": seq}, two).tolist() == [False, True, True, True, True]
    assert p.alignment_rows({"seq": None, "steps_left": torch.tensor([3, 0, 1])}, lc).tolist() == [False, True, False]
    # no step among the last ones: those nearest the end (never an empty loss)
    assert p.alignment_rows({"seq": None, "steps_left": torch.tensor([3, 2, 4, 2])}, lc).tolist() == [
        False, True, False, True]
    with pytest.raises(ValueError, match="steps_left"):
        p.alignment_rows({"seq": None}, lc)


def test_align_last_keeps_only_the_last_steps_in_the_loss():
    p = make()
    batch = tile_batch(6)
    batch["steps_left"] = torch.tensor([0, 3, 0, 1, 2, 0])
    seen = []
    orig = p.contrastive.forward
    p.contrastive.forward = lambda v, l, ids: seen.append(len(ids)) or orig(v, l, ids)
    p(batch, LossConfig(bc=0.0, contrastive=1.0, itm=1.0, align_last=1))
    p(batch, LossConfig(bc=0.0, contrastive=1.0, itm=1.0))
    assert seen == [3, 6]
