"""Colour permutation with held-out colour-object pairs (``data.augment colour`` + ``data.hold_out_pairs``): the
allowed permutations never relabel a training instruction into a held-out pair, grid and instruction stay
consistent, and a tiny generate + train run never shows the policy a held-out pair."""

from __future__ import annotations

import itertools
import json
import random
import types
from pathlib import Path

import pytest
import torch

from vlafoundry.data.generate import held_out_in, mission_pairs
from vlafoundry.envs.augment import ColourPermutation
from vlafoundry.envs.babyai import colour_permutation, dataset_hold_out_pairs

COLOURS = ["red", "green", "blue", "purple", "yellow", "grey"]
OBJECT_IDS = {"door": 4, "key": 5, "ball": 6, "box": 7}
ALL_PAIRS = [f"{c} {o}" for c in COLOURS for o in OBJECT_IDS]  # 24
DOCUMENTED = ["red ball", "green key", "yellow box"]


def _missions() -> list[str]:
    """Every one-pair mission, and two-pair missions over a fixed sample of pair combinations."""
    one = [f"go to the {p}" for p in ALL_PAIRS]
    rng = random.Random(0)
    two = [f"put the {a} next to the {b}" for a, b in rng.sample(list(itertools.permutations(ALL_PAIRS, 2)), 60)]
    return one + two


def _hold_out_sets() -> list[list[str]]:
    """Each pair alone, each colour's and each object's pairs together, the documented set, random larger sets."""
    rng = random.Random(1)
    sets = [[p] for p in ALL_PAIRS]
    sets += [[f"{c} {o}" for o in OBJECT_IDS] for c in COLOURS]
    sets += [[f"{c} {o}" for c in COLOURS[:-1]] for o in OBJECT_IDS]
    sets += [DOCUMENTED] + [rng.sample(ALL_PAIRS, k) for k in (4, 6, 9, 12)]
    return sets


@pytest.mark.parametrize("held", _hold_out_sets(), ids=lambda h: "+".join(p.replace(" ", "_") for p in h))
def test_allowed_permutations_never_name_a_held_out_pair_and_are_all_the_safe_ones(held: list[str]) -> None:
    aug = colour_permutation(held)
    perms = [tuple(p) for p in itertools.permutations(range(len(COLOURS)))]
    for text in _missions():
        if held_out_in(text, held) is not None:
            continue  # training data never holds these (tested below: the augmentation moves them off)
        allowed = {tuple(p) for p in aug.allowed_permutations(text).tolist()}
        assert (0, 1, 2, 3, 4, 5) in allowed  # the identity: every training instruction can stay as it is
        for p in perms:  # brute force with the data module's own mission parser
            safe = held_out_in(aug.rewrite(text, p), held) is None
            assert (p in allowed) == safe, (text, held, p)


def test_instruction_naming_a_held_out_pair_is_moved_off_it_or_kept() -> None:
    aug = colour_permutation(["red ball"])
    allowed = aug.allowed_permutations("go to the red ball").tolist()
    assert len(allowed) == 600 and all(p[0] != 0 for p in allowed)  # red goes anywhere but red
    two = ColourPermutation(["red", "blue"], [6], hold_out_pairs=["blue ball"])
    assert two.allowed_permutations("go to the red ball").tolist() == [[0, 1]]  # only the identity: kept as is
    img = torch.zeros(3, 2, 7, 7, 3, dtype=torch.long)
    img[:, :, 2, 2, 0] = 6  # a red ball in every frame
    out = two({"image": img, "instruction": ["go to the red ball"] * 3}, torch.Generator().manual_seed(0))
    assert out["instruction"] == ["go to the red ball"] * 3 and torch.equal(out["image"], img)


def _grid_with(pairs: list[tuple[str, str]]) -> torch.Tensor:
    """(2, 7, 7, 3) two frames of a symbolic grid with one object per pair, plus a wall (type 2, colour 5)."""
    img = torch.zeros(2, 7, 7, 3, dtype=torch.long)
    img[..., 0] = 1
    img[:, 0, 0] = torch.tensor([2, 5, 0])
    for j, (c, o) in enumerate(pairs):
        img[:, 1 + j, 3] = torch.tensor([OBJECT_IDS[o], COLOURS.index(c), 0])
    return img


def test_batches_name_no_held_out_pair_and_grid_matches_instruction() -> None:
    aug = colour_permutation(DOCUMENTED)
    texts = [t for t in _missions() if held_out_in(t, DOCUMENTED) is None]
    batch = {"image": torch.stack([_grid_with([tuple(p.split()) for p in mission_pairs(t)]) for t in texts]),
             "instruction": texts, "instruction_id": torch.arange(len(texts))}  # fmt: skip
    new_colours: dict[str, set[str]] = {}
    for step in range(40):
        out = aug(batch, torch.Generator().manual_seed(step))
        for i, (old, new) in enumerate(zip(texts, out["instruction"], strict=True)):
            assert held_out_in(new, DOCUMENTED) is None, (old, new)
            named = mission_pairs(new)
            assert len(named) == len(mission_pairs(old))
            for j, pair in enumerate(named):  # the object cell of pair j now has the instruction's colour
                c, o = pair.split()
                for frame in out["image"][i]:
                    assert frame[1 + j, 3].tolist() == [OBJECT_IDS[o], COLOURS.index(c), 0], (old, new)
            assert out["image"][i][:, 0, 0].tolist() == [[2, 5, 0]] * 2  # walls keep their colour
            if old == "go to the blue ball":
                new_colours.setdefault(old, set()).add(new.split()[3])
    # the permutation is random among the allowed ones: blue becomes every colour but red over 40 draws
    assert new_colours["go to the blue ball"] == set(COLOURS) - {"red"}
    assert isinstance(out["instruction_id"], torch.Tensor) and out["instruction_id"].shape == (len(texts),)


def test_real_gotolocal_observations_stay_consistent() -> None:
    """On real GoToLocal resets: the relabelled mission's pair is an object present in the relabelled grid."""
    from vlafoundry.envs import make_env

    env = make_env("babyai/GoToLocal")
    obs = [env.reset(seed=s) for s in range(60)]
    obs = [o for o in obs if held_out_in(o["instruction"], DOCUMENTED) is None]
    batch = {"image": torch.stack([torch.as_tensor(o["image"]).long()[None] for o in obs]),  # (B, 1, H, W, C)
             "instruction": [o["instruction"] for o in obs]}  # fmt: skip
    out = colour_permutation(DOCUMENTED)(batch, torch.Generator().manual_seed(3))
    checked = 0
    for old_img, img, old_text, text in zip(batch["image"], out["image"], batch["instruction"], out["instruction"],
                                            strict=True):  # fmt: skip
        assert held_out_in(text, DOCUMENTED) is None
        (old_pair,), (pair,) = mission_pairs(old_text), mission_pairs(text)
        (c0, o0), (c, o) = old_pair.split(), pair.split()
        assert o == o0
        before = {tuple(x) for x in old_img.reshape(-1, 3)[:, :2].tolist()}
        after = {tuple(x) for x in img.reshape(-1, 3)[:, :2].tolist()}
        if (OBJECT_IDS[o0], COLOURS.index(c0)) in before:  # the target is in view (the image is the agent's view)
            assert (OBJECT_IDS[o], COLOURS.index(c)) in after, (old_text, text)
            checked += 1
        assert len(after) == len(before)  # a permutation: distinct (type, colour) cells stay distinct
    assert checked >= 10


def test_pairs_come_from_the_config_and_the_dataset_metadata(tmp_path: Path) -> None:
    from vlafoundry.data.format import META_FILE
    from vlafoundry.envs import babyai, get_family

    assert babyai._DATASET_META == META_FILE  # envs cannot import data: the name is repeated there
    (tmp_path / META_FILE).write_text(json.dumps({"generation": {"hold_out_pairs": ["green key"]}}))
    cfg = types.SimpleNamespace(hold_out_pairs=["red ball"], dataset_dir=lambda: tmp_path)
    assert dataset_hold_out_pairs(cfg) == ["green key", "red ball"]
    aug = get_family("babyai/GoToLocal").augmentation("colour", cfg)
    assert aug.hold_out_pairs == (("green", "key"), ("red", "ball"))
    assert "hold_out_pairs=['green key', 'red ball']" in repr(aug)
    plain = get_family("babyai/GoToLocal").augmentation(
        "colour", types.SimpleNamespace(hold_out_pairs=[], dataset_dir=lambda: tmp_path / "none"))
    assert plain.hold_out_pairs == () and "hold_out_pairs" not in repr(plain)
    with pytest.raises(ValueError, match="hold_out_pairs: expected 'colour object' with colour in"):
        colour_permutation(["pink ball"])


def test_config_accepts_hold_out_pairs_with_colour_augmentation() -> None:
    from vlafoundry.train.config import load_config

    cfg = load_config("babyai-gotolocal", ["--data.hold_out_pairs", "[red ball]", "--data.augment", "colour"])
    assert cfg.data.hold_out_pairs == ["red ball"] and cfg.data.augment == "colour"


def test_tiny_generate_and_train_never_shows_a_held_out_pair(tmp_path: Path) -> None:
    """End to end: a dataset generated with held-out pairs, trained with colour augmentation (pairs read from the
    dataset's metadata as well as the config): no training batch the policy sees names a held-out pair, and some
    batches are relabelled."""
    from vlafoundry.data import generate_dataset
    from vlafoundry.train.config import load_config
    from vlafoundry.train.trainer import Trainer

    held = ["blue ball", "grey key", "purple box", "red ball", "green key", "yellow box"]
    root = tmp_path / "ds"
    generate_dataset("babyai/GoToLocal", 24, root, workers=1, seed=0, progress=False, hold_out_pairs=held)
    cfg = load_config("babyai-gotolocal", [
        "--model.d_model", "32", "--model.d_ff", "64", "--model.num_heads", "2", "--model.num_layers", "1",
        "--model.text_layers", "1", "--model.embed_dim", "16", "--train.batch_size", "8", "--train.steps", "6",
        "--train.warmup_steps", "1", "--train.eval_every", "100", "--train.checkpoint_every", "100",
        "--train.progress", "false", "--train.threads", "1", "--data.val_fraction", "0.0",
        "--data.augment", "colour", "--data.hold_out_pairs", "[red ball]", "--data.path", str(root)])  # fmt: skip
    tr = Trainer(cfg, tmp_path / "run", dataset_root=root)
    assert {" ".join(p) for p in tr._augment.hold_out_pairs} == set(held)  # the metadata's pairs too
    seen: list[str] = []
    real = tr.policy.forward

    def spy(batch, loss_cfg=None):
        seen.extend(batch["instruction"])
        return real(batch, loss_cfg)

    tr.policy.forward = spy
    tr.fit()
    assert len(seen) == 6 * 8
    assert all(held_out_in(s, held) is None for s in seen), [s for s in seen if held_out_in(s, held)]
    raw = set(json.loads((root / "vlafoundry.json").read_text())["instructions"])
    assert any(s not in raw for s in seen)  # relabelled into trained pairs the data did not name


def _held_cells(img: torch.Tensor, held: list[str]) -> int:
    """How many object cells of an (..., H, W, C) grid show a held-out pair."""
    ids = {(OBJECT_IDS[p.split()[1]], COLOURS.index(p.split()[0])) for p in held}
    return sum((t, c) in ids for t, c in img.reshape(-1, img.shape[-1])[:, :2].tolist())


def test_visible_objects_keep_their_held_out_status() -> None:
    """A distractor of a held-out pair stays one and no other object becomes one, so the augmented frames hold the
    held-out objects exactly as often as the data (not more, always as distractors)."""
    aug = colour_permutation(DOCUMENTED)
    # a blue ball target with a red ball (held out) and a green ball in view: red stays red, blue and green not red
    allowed = aug.allowed_permutations("go to the blue ball", [(6, 0), (6, 1), (6, 2)]).tolist()
    assert allowed and all(p[0] == 0 and p[1] != 0 and p[2] != 0 for p in allowed)
    assert len(aug.allowed_permutations("go to the blue ball")) == 600  # without the frames: red only kept off blue
    rng = random.Random(2)
    texts, grids = [], []
    for t in [t for t in _missions() if held_out_in(t, DOCUMENTED) is None]:
        pairs = [tuple(p.split()) for p in mission_pairs(t)]
        pairs += [(rng.choice(COLOURS), rng.choice(list(OBJECT_IDS))) for _ in range(3)]  # distractors, any pair
        texts.append(t)
        grids.append(_grid_with(pairs))
    batch = {"image": torch.stack(grids), "instruction": texts}
    assert sum(_held_cells(g, DOCUMENTED) > 0 for g in grids) > 10
    relabelled = 0
    for step in range(10):
        out = aug(batch, torch.Generator().manual_seed(step))
        for i in range(len(texts)):
            assert held_out_in(out["instruction"][i], DOCUMENTED) is None
            assert _held_cells(out["image"][i], DOCUMENTED) == _held_cells(grids[i], DOCUMENTED)
            relabelled += out["instruction"][i] != texts[i]
    assert relabelled > 5 * len(texts)  # most rows still change colour
