"""Per-cell labels of BabyAI RGB frames: the tile decoder reproduces the env's symbolic view exactly."""

from __future__ import annotations

import numpy as np
import pytest

from vlafoundry.envs import get_family
from vlafoundry.envs.babyai import BabyAIEnv
from vlafoundry.envs.babyai_cells import UNKNOWN, MinigridTileDecoder, tile_decoder


def _frames_and_views(level: str, tile_size: int, seeds: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames and the symbolic views (rows, cols as in the image) of the same states, expert plus random
    actions, so that objects are carried, doors opened and cells hidden behind walls."""
    env = BabyAIEnv(level, image="rgb", tile_size=tile_size)
    rng = np.random.default_rng(0)
    frames, views = [], []
    for seed in range(seeds):
        obs = env.reset(seed=seed)
        for _ in range(steps):
            frames.append(obs["image"])
            views.append(env.unwrapped.gen_obs()["image"].transpose(1, 0, 2))  # (x, y) -> (row, col)
            try:
                a = env.expert_action()
            except Exception:  # noqa: BLE001  (the bot can give up after random actions undid its plan)
                a = int(rng.integers(6))
            if rng.random() < 0.3:
                a = int(rng.integers(6))
            obs, _, term, trunc, _ = env.step(a)
            if term or trunc:
                break
    env.close()
    return np.stack(frames), np.stack(views)


@pytest.mark.parametrize("level,tile_size", [("PutNextLocal", 8), ("GoToLocal", 8), ("UnlockLocal", 8),
                                             ("Open", 6)])
def test_decoder_reproduces_the_symbolic_view(level, tile_size):
    frames, views = _frames_and_views(level, tile_size, seeds=4, steps=40)
    labels = MinigridTileDecoder(tile_size)(frames)
    assert labels.shape == views.shape and labels.dtype == np.int16
    np.testing.assert_array_equal(labels, views.astype(np.int16))
    if level == "PutNextLocal":  # carried objects occur, and the agent's own cell shows them
        assert (labels[:, 6, 3, 0] > 1).any()


def test_tiles_two_labels_draw_are_unknown():
    """At 4 pixels an open door's outline is an empty cell's: such tiles say neither (-1); the rest stay exact."""
    frames, views = _frames_and_views("GoToLocal", 4, seeds=3, steps=30)
    labels = MinigridTileDecoder(4)(frames)
    known = labels[..., 0] != UNKNOWN
    assert 0 < (~known).mean() < 0.6
    assert (labels[~known] == UNKNOWN).all()
    np.testing.assert_array_equal(labels[known], views[known])


def test_unknown_tiles_are_minus_one_and_leading_dims_are_kept():
    dec = tile_decoder(8)
    frames, views = _frames_and_views("PutNextLocal", 8, seeds=1, steps=6)
    frames = frames[:6].reshape(2, 3, 56, 56, 3).copy()
    frames[1, 2, 8:16, 16:24] = 7  # one tile no Minigrid object draws
    labels = dec(frames)
    assert labels.shape == (2, 3, 7, 7, 3)
    assert (labels[1, 2, 1, 2] == UNKNOWN).all()
    keep = np.ones((2, 3, 7, 7), bool)
    keep[1, 2, 1, 2] = False
    np.testing.assert_array_equal(labels[keep], views[:6].reshape(2, 3, 7, 7, 3)[keep])
    assert tile_decoder(8) is dec  # built once per process


def test_decoder_rejects_bad_frames():
    dec = tile_decoder(8)
    with pytest.raises(ValueError, match="expected uint8 RGB"):
        dec(np.zeros((2, 56, 56, 3), np.float32))
    with pytest.raises(ValueError, match="multiples of tile_size=8"):
        dec(np.zeros((2, 50, 56, 3), np.uint8))
    with pytest.raises(ValueError, match="tile_size: expected a positive integer"):
        MinigridTileDecoder(0)


def test_family_labeller_needs_rgb_frames():
    fam = get_family("babyai")
    assert fam.cell_labels("minigrid", (56, 56, 3)).tile_size == 8
    assert fam.cell_labels("minigrid", [112, 112, 3]).tile_size == 16
    with pytest.raises(ValueError, match="needs egocentric RGB frames"):
        fam.cell_labels("minigrid", (7, 7, 3))  # the symbolic view itself
    with pytest.raises(ValueError, match="expected 'minigrid' or 'none'"):
        fam.cell_labels("coco", (56, 56, 3))
    with pytest.raises(ValueError, match="provide no per-cell labels"):
        get_family("metaworld").cell_labels("minigrid", (64, 64, 3))
