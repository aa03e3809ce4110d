"""Colour permutation (``data.augment colour``): consistent in grid and instruction, on real BabyAI batches."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlafoundry.data import ColourPermutation, DemoDataset, EpisodeDataset, stable_text_id
from vlafoundry.envs.babyai import colour_permutation

COLOURS = ["red", "green", "blue", "purple", "yellow", "grey"]
OBJECTS = {"door": 4, "key": 5, "ball": 6, "box": 7}
WALL = 2


def _object_cells(image: torch.Tensor) -> set[tuple[int, int]]:
    """(type, colour) of every recolourable object cell in an (..., H, W, C) grid."""
    cells = image.reshape(-1, image.shape[-1])
    return {(int(t), int(c)) for t, c, _ in cells.tolist() if t in OBJECTS.values()}


def test_permutation_is_consistent_between_grid_and_instruction_on_real_episodes(babyai_root: Path) -> None:
    ds = EpisodeDataset(babyai_root, split="train", val_fraction=0.0)
    batch = ds.__getitems__(list(range(len(ds))))  # (B, L, 7, 7, 3) whole episodes
    aug = colour_permutation()
    out = aug(batch, torch.Generator().manual_seed(0))
    assert out["image"] is not batch["image"] and torch.equal(batch["image"], ds.__getitems__(list(range(len(ds))))["image"])
    changed = 0
    for i, (old_text, new_text) in enumerate(zip(batch["instruction"], out["instruction"], strict=True)):
        old_img, new_img = batch["image"][i], out["image"][i]
        # non-object cells and the other channels are untouched
        kinds = old_img[..., 0]
        keep = ~torch.isin(kinds.long(), torch.tensor(list(OBJECTS.values())))
        assert torch.equal(old_img[..., 1][keep], new_img[..., 1][keep])
        assert torch.equal(old_img[..., 0], new_img[..., 0]) and torch.equal(old_img[..., 2], new_img[..., 2])
        # one permutation for the whole episode: every (type, colour) maps to one new colour at every step
        mapping: dict[int, set[int]] = {}
        for a, b in zip(old_img[..., 1][~keep].tolist(), new_img[..., 1][~keep].tolist(), strict=True):
            mapping.setdefault(a, set()).add(b)
        assert all(len(v) == 1 for v in mapping.values())
        assert len({next(iter(v)) for v in mapping.values()}) == len(mapping)  # a bijection on the colours seen
        # the instruction's colour word moved exactly as the grid's colour did
        words = re.findall(r"\b(" + "|".join(COLOURS) + r")\b", old_text)
        new_words = re.findall(r"\b(" + "|".join(COLOURS) + r")\b", new_text)
        assert len(words) == len(new_words)
        for w, nw in zip(words, new_words, strict=True):
            c = COLOURS.index(w)
            if c in mapping:  # the named colour is on screen in this episode
                assert mapping[c] == {COLOURS.index(nw)}
        assert re.sub(r"\b(" + "|".join(COLOURS) + r")\b", "C", old_text) == re.sub(
            r"\b(" + "|".join(COLOURS) + r")\b", "C", new_text)  # only colour words change
        changed += old_text != new_text
    assert changed > 0
    # the named object (type and recoloured colour) is still in the first frame when it was before
    for i, text in enumerate(batch["instruction"]):
        m = re.search(r"the (" + "|".join(COLOURS) + r") (" + "|".join(OBJECTS) + r")", text)
        if m and (OBJECTS[m.group(2)], COLOURS.index(m.group(1))) in _object_cells(batch["image"][i, 0]):
            m2 = re.search(r"the (" + "|".join(COLOURS) + r") (" + "|".join(OBJECTS) + r")", out["instruction"][i])
            assert (OBJECTS[m2.group(2)], COLOURS.index(m2.group(1))) in _object_cells(out["image"][i, 0])
    # pair ids: recomputed from the new text, equal exactly for equal instructions
    ids = out["instruction_id"].tolist()
    for a in range(len(ids)):
        for b in range(len(ids)):
            assert (ids[a] == ids[b]) == (out["instruction"][a] == out["instruction"][b])


def test_permutation_draws_are_uniform_reproducible_and_checked(babyai_root: Path) -> None:
    aug = ColourPermutation(COLOURS, list(OBJECTS.values()))
    ds = DemoDataset(babyai_root, split="train", val_fraction=0.0)
    batch = ds.__getitems__([0, 1, 2])  # (B, T, 7, 7, 3) steps with history
    a = aug(batch, torch.Generator().manual_seed(5))
    b = aug(batch, torch.Generator().manual_seed(5))
    assert torch.equal(a["image"], b["image"]) and a["instruction"] == b["instruction"]
    # every colour goes to every colour about equally often (1/6 each; 600 draws of "red": std ~0.015)
    many = aug({"image": torch.zeros(600, 1, 1, 1, 3, dtype=torch.uint8) + torch.tensor([6, 0, 0], dtype=torch.uint8),
                "instruction": ["the red ball"] * 600}, torch.Generator().manual_seed(1))  # fmt: skip
    freq = torch.bincount(many["image"][..., 1].flatten().long(), minlength=6).float() / 600
    assert (freq - 1 / 6).abs().max() < 0.06
    assert [f"the {COLOURS[int(c)]} ball" for c in many["image"][:, 0, 0, 0, 1]] == many["instruction"]
    walls = torch.zeros(4, 1, 2, 2, 3, dtype=torch.uint8) + torch.tensor([WALL, 5, 0], dtype=torch.uint8)
    assert torch.equal(aug({"image": walls, "instruction": ["x"] * 4})["image"], walls)  # grey walls stay grey
    with pytest.raises(ValueError, match="symbolic integer grid"):
        aug({"image": torch.zeros(2, 1, 7, 7, 3), "instruction": ["a", "b"]})
    with pytest.raises(ValueError, match="instruction: expected 2 strings"):
        aug({"image": torch.zeros(2, 1, 7, 7, 3, dtype=torch.uint8), "instruction": ["a"]})
    with pytest.raises(ValueError, match="colour_names"):
        ColourPermutation(["red", "red"], [6])
    assert aug.rewrite("put the red key next to the reddish grey box", [1, 0, 2, 3, 4, 2]) == (
        "put the green key next to the reddish blue box")  # whole words only
    assert stable_text_id("go to the red ball") == stable_text_id("go to the red ball") != stable_text_id("go")
    code = "from vlafoundry.data import stable_text_id; print(stable_text_id('go to the red ball'))"
    for salt in ("1", "2"):  # other processes with other str-hash salts: the same id
        env = dict(os.environ, PYTHONHASHSEED=salt)
        got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
        assert int(got.stdout) == stable_text_id("go to the red ball")
