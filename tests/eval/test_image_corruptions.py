"""Image corruptions of the robustness table (Gaussian noise, occluding square, colour jitter, shifted view, cell
noise): their statistics, determinism per (seed, episode), uint8 and shape kept for one camera (H, W, 3) and K cameras
(K, H, W, 3), the same corruption in closed loop and offline, condition names (``--conditions``), and a tiny
end-to-end robustness run of an RGB BabyAI policy whose report has the new rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlafoundry.eval import image_corruptions as ic
from vlafoundry.eval.offline import corrupt_batch
from vlafoundry.eval.robustness import default_conditions, parse_conditions
from vlafoundry.eval.rollout import ObservationCorruption, evaluate_policy

SHAPES = [(56, 56, 3), (2, 32, 40, 3)]  # one camera; two cameras
PIXEL_CONDITIONS = [
    ObservationCorruption(image_gaussian=0.1),
    ObservationCorruption(image_occlusion=0.25),
    ObservationCorruption(image_jitter=0.3),
    ObservationCorruption(image_shift=4),
    ObservationCorruption(image_noise=0.2),
    ObservationCorruption(image_shift=2, image_jitter=0.2, image_occlusion=0.1, image_gaussian=0.05),
    ObservationCorruption(remove=("image",)),
]


def _frame(shape, seed=0, high=100):
    """Random uint8 pixels below ``high`` (so never the occluder's grey 128)."""
    return np.random.default_rng(seed).integers(0, high, size=shape, dtype=np.uint8)


def _grey_mask(frame):
    return (frame == ic.OCCLUSION_FILL).all(axis=-1)


# ------------------------------------------------------------------------------------------------ statistics


@pytest.mark.parametrize(("shape", "fraction"), [((56, 56, 3), 0.25), ((40, 60, 3), 0.1), ((2, 32, 32, 3), 0.5)])
def test_occlusion_covers_the_stated_fraction_with_one_grey_square_per_camera(shape, fraction):
    cond = ObservationCorruption(image_occlusion=fraction)
    out = cond.corrupt_image(_frame(shape), np.random.default_rng(1))
    cams = ic.as_cameras(out)
    h, w = cams.shape[1:3]
    side = ic.occlusion_side(fraction, h, w)
    assert abs(side * side / (h * w) - fraction) <= (2 * side + 1) / (h * w)  # the closest square
    if shape == (56, 56, 3):
        assert side == 28  # exactly a quarter of the frame
    for cam in cams:
        mask = _grey_mask(cam)
        assert mask.sum() == side * side
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        assert len(rows) == len(cols) == side and mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
    assert ic.occlusion_side(0.0, 10, 10) == 0 and ic.occlusion_side(1.0, 10, 20) == 10  # at most the short side


def test_occluder_position_varies_between_episodes_and_cameras():
    cond = ObservationCorruption(image_occlusion=0.1)
    corners = [tuple(map(tuple, cond.frame_params((3, 56, 56, 3), np.random.default_rng(s)).corner))
               for s in range(8)]  # fmt: skip
    assert len(set(corners)) > 1  # episodes differ
    assert any(len(set(c)) > 1 for c in corners)  # cameras differ


@pytest.mark.parametrize("k", [1, 4])
def test_shift_moves_content_by_k_pixels_and_repeats_the_edges(k):
    frame = _frame((2, 24, 24, 3))
    cond = ObservationCorruption(image_shift=k)
    params = cond.frame_params(frame.shape, np.random.default_rng(3))
    assert (np.abs(params.shift) == k).all()
    out = cond.corrupt_image(frame, np.random.default_rng(0), params)
    for cam, (dy, dx) in enumerate(params.shift.tolist()):
        src, dst = frame[cam], out[cam]
        ys, yd = (slice(0, 24 - dy), slice(dy, 24)) if dy > 0 else (slice(-dy, 24), slice(0, 24 + dy))
        xs, xd = (slice(0, 24 - dx), slice(dx, 24)) if dx > 0 else (slice(-dx, 24), slice(0, 24 + dx))
        np.testing.assert_array_equal(dst[yd, xd], src[ys, xs])  # the content, moved by (dy, dx)
        edge_row = 0 if dy > 0 else 23  # the rows the shift uncovered repeat the nearest source row
        uncovered = slice(0, dy) if dy > 0 else slice(24 + dy, 24)
        np.testing.assert_array_equal(dst[uncovered, xd], np.broadcast_to(src[edge_row, xs], dst[uncovered, xd].shape))
    with pytest.raises(ValueError, match="image_shift: expected fewer pixels than the frame's side 24, got 24"):
        ObservationCorruption(image_shift=24).corrupt_image(frame, np.random.default_rng(0))


@pytest.mark.parametrize("s", [0.1, 0.3, 0.6])
def test_colour_jitter_factors_and_pixels_stay_within_bounds(s):
    cond = ObservationCorruption(image_jitter=s)
    for seed in range(20):
        f = cond.frame_params((2, 8, 8, 3), np.random.default_rng(seed)).jitter
        assert f.shape == (2, 6) and (f >= 1 - s).all() and (f <= 1 + s).all()
    grey = np.full((3, 16, 16, 3), 100, dtype=np.uint8)  # a uniform grey frame: only brightness and gains act
    params = cond.frame_params(grey.shape, np.random.default_rng(0))
    out = cond.corrupt_image(grey, np.random.default_rng(0), params).astype(float)
    assert (out >= np.floor(100 * (1 - s) ** 2)).all() and (out <= np.ceil(100 * (1 + s) ** 2)).all()
    expect = np.clip(np.rint(100 * params.jitter[:, 0, None] * params.jitter[:, 3:]), 0, 255)  # (K, 3)
    np.testing.assert_allclose(out[:, 0, 0], expect, atol=1)
    frame = _frame((16, 16, 3), high=256)
    assert not np.array_equal(cond.corrupt_image(frame, np.random.default_rng(0)), frame)
    np.testing.assert_array_equal(ic.color_jitter(frame, np.ones((1, 6))), frame)  # factors 1: unchanged


def test_colour_jitter_contrast_and_saturation_act_as_documented():
    frame = _frame((8, 8, 3), high=256)
    flat = np.array([[1.0, 0.0, 1.0, 1, 1, 1]], dtype=np.float32)  # contrast 0: every pixel -> the mean luminance
    out = ic.color_jitter(frame, flat)
    assert np.ptp(out) <= 1
    grey = ic.color_jitter(frame, np.array([[1.0, 1.0, 0.0, 1, 1, 1]], dtype=np.float32))  # saturation 0
    assert (np.ptp(grey.astype(int), axis=-1) <= 1).all()


@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_gaussian_noise_has_the_stated_std(sigma):
    frame = np.full((64, 64, 3), 128, dtype=np.uint8)
    out = ObservationCorruption(image_gaussian=sigma).corrupt_image(frame, np.random.default_rng(0))
    diff = out.astype(float) - 128
    assert abs(diff.std() - 255 * sigma) < 0.03 * 255 * sigma and abs(diff.mean()) < 0.5


def test_cell_noise_moves_pixels_within_each_camera():
    frame = np.stack([np.full((16, 16, 3), 10 * (k + 1), dtype=np.uint8) for k in range(3)])  # one colour each
    frame[:, 0, 0] = 200  # one distinct pixel per camera
    out = ObservationCorruption(image_noise=0.5).corrupt_image(frame, np.random.default_rng(0))
    for k in range(3):
        assert set(np.unique(out[k])) <= {10 * (k + 1), 200}  # only this camera's values
    one = _frame((16, 16, 3), high=256)
    changed = (ObservationCorruption(image_noise=0.2).corrupt_image(one, np.random.default_rng(0)) != one).any(-1)
    assert 0 < changed.mean() <= 0.25


# ------------------------------------------------------------------------------------------------ contract


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cond", PIXEL_CONDITIONS, ids=lambda c: c.label)
def test_corruptions_keep_dtype_and_shape_and_are_deterministic(shape, cond):
    frame = _frame(shape, high=256)
    state = np.zeros(4, dtype=np.float32)
    outs = [cond.corrupt_step(frame.copy(), state, np.random.default_rng([7, 3]))[0] for _ in range(2)]
    assert outs[0].dtype == np.uint8 and outs[0].shape == shape
    np.testing.assert_array_equal(outs[0], outs[1])  # same seed, same corruption
    assert not np.array_equal(outs[0], frame)
    others = [cond.corrupt_step(frame.copy(), state, np.random.default_rng([s, 3]))[0] for s in range(8, 14)]
    assert np.array_equal(others[0], np.zeros_like(frame)) == ("image" in cond.remove)
    if "image" not in cond.remove:  # other episodes, other draws (a shift has only four directions)
        assert any(not np.array_equal(o, outs[0]) for o in others)


def test_pixel_corruptions_refuse_non_pixels_and_bad_settings():
    with pytest.raises(ValueError, match="image: expected uint8 RGB pixels, got dtype float32"):
        ObservationCorruption(image_jitter=0.2).corrupt_image(np.zeros((8, 8, 3), np.float32), np.random.default_rng())
    with pytest.raises(ValueError, match=r"image: expected a frame \(H, W, C\) or cameras"):
        ObservationCorruption(image_occlusion=0.2).corrupt_image(np.zeros((8, 3), np.uint8), np.random.default_rng())
    for kwargs, msg in [({"image_jitter": 1.0}, r"image_jitter: expected a strength in \[0, 1\), got 1.0"),
                        ({"image_occlusion": 1.5}, r"image_occlusion: expected a fraction in \[0, 1\], got 1.5"),
                        ({"image_gaussian": -0.1}, "image_gaussian: expected a standard deviation >= 0, got -0.1"),
                        ({"image_shift": 1.5}, "image_shift: expected a whole number of pixels >= 0, got 1.5"),
                        ]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            ObservationCorruption(**kwargs)
    assert ObservationCorruption(image_shift=2).pixels_only and not ObservationCorruption(image_noise=0.2).pixels_only
    assert not ObservationCorruption(image_shift=2).is_identity


# ------------------------------------------------------------------------------------------------ closed loop


class _Recorder:
    """A stateless random policy that keeps every image batch it is shown and when slots restart."""

    stateless = False

    def __init__(self) -> None:
        self.rng = np.random.default_rng(0)
        self.frames: list[np.ndarray] = []
        self.events: list[str] = []

    def reset(self, env_indices=None) -> None:
        self.events.append("reset")

    def select_action(self, obs):
        self.frames.append(np.array(obs["image"]))
        self.events.append("act")
        return self.rng.integers(0, 3, size=len(obs["instruction"]))


def _run(cond, workers=0, num_envs=1):
    pol = _Recorder()
    res = evaluate_policy(pol, "babyai/GoToLocal", episodes=2, num_envs=num_envs, workers=workers, seed_start=50,
                          corruption=cond, env_kwargs={"image": "rgb", "max_steps": 4}, max_steps=4)  # fmt: skip
    return pol, res


def test_closed_loop_occluder_is_fixed_per_episode_and_reproducible():
    cond = ObservationCorruption(image_occlusion=0.25)
    pol, _ = _run(cond)
    side = ic.occlusion_side(0.25, 56, 56)
    episodes: list[list[np.ndarray]] = []
    frames = iter(pol.frames)
    for ev in pol.events:  # "reset" starts an episode (the run's own reset, then one per new episode)
        if ev == "reset":
            episodes.append([])
        else:
            episodes[-1].append(_grey_mask(next(frames)[0]))
    assert len(episodes) == 2 and all(len(e) >= 2 for e in episodes)
    for masks in episodes:
        assert all(m.sum() >= side * side for m in masks)
        assert all(np.array_equal(m & masks[0], masks[0]) for m in masks)  # the same square at every step
    assert not np.array_equal(episodes[0][0], episodes[1][0])  # another episode, another place
    again = _run(cond)[0]
    assert all(np.array_equal(a, b) for a, b in zip(pol.frames, again.frames, strict=True))


def test_closed_loop_frames_do_not_depend_on_workers():
    cond = ObservationCorruption(image_jitter=0.3, image_shift=2, image_gaussian=0.05)
    one, _ = _run(cond, workers=0, num_envs=2)
    two, _ = _run(cond, workers=2, num_envs=2)
    assert len(one.frames) == len(two.frames)
    for a, b in zip(one.frames, two.frames, strict=True):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.uint8 and a.shape == (2, 56, 56, 3)


# ------------------------------------------------------------------------------------------------ offline


def _batch(image, episodes, obs_mask=None):
    b = len(episodes)
    return {"image": torch.from_numpy(image), "state": torch.zeros(b, image.shape[1], 4),
            "instruction": ["go to the red ball"] * b, "instruction_present": torch.ones(b, dtype=torch.bool),
            "image_present": torch.ones(b, dtype=torch.bool), "state_present": torch.ones(b, dtype=torch.bool),
            "episode": torch.tensor(episodes), **({"obs_mask": torch.from_numpy(obs_mask)} if obs_mask is not None
                                                  else {})}  # fmt: skip


@pytest.mark.parametrize("frame_shape", SHAPES)
def test_offline_rows_apply_the_closed_loop_corruption_per_episode(frame_shape):
    cond = ObservationCorruption(image_jitter=0.3, image_occlusion=0.2, image_shift=3)  # no per-step randomness
    image = _frame((3, 2, *frame_shape), high=256)  # (B, T, [K,] H, W, C)
    image[2] = image[0]
    mask = np.array([[True, True], [False, True], [True, True]])
    image[1, 0] = 0  # a padded history frame, as the dataset gives
    out = corrupt_batch(_batch(image, [5, 9, 5], mask), cond, np.random.default_rng(0), view_seed=11)["image"]
    out = out.numpy()
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out[0], out[2])  # same episode, same frames -> same corruption
    assert not out[1, 0].any()  # padding stays blank
    params = cond.frame_params(frame_shape, np.random.default_rng([11, 5]))  # what episode 5 draws
    np.testing.assert_array_equal(out[0, 1], cond.corrupt_image(image[0, 1], np.random.default_rng(0), params))
    again = corrupt_batch(_batch(image[:1], [5]), cond, np.random.default_rng(1), view_seed=11)["image"].numpy()
    np.testing.assert_array_equal(again[0], out[0])  # another batch, same episode: the same draws


# ------------------------------------------------------------------------------------------------ conditions


def test_parse_conditions_names_rows_and_refuses_what_the_policy_cannot_take():
    conds = parse_conditions("image_occlusion=0.25, image_jitter=0.3,no_state+image_shift=4")
    assert [c.label for c in conds] == ["full input", "image occluded 25%", "image colour jitter s=0.3",
                                        "no state, image shifted 4 px"]  # fmt: skip
    assert conds[3].remove == ("state",) and conds[3].image_shift == 4
    default = parse_conditions("default,image_shift=8", has_image=True, pixels=True)
    assert [c.label for c in default[:-1]] == [c.label for c in default_conditions(True, pixels=True)]
    assert default[-1].image_shift == 8 and len(default_conditions(True, pixels=True)) == 11
    assert len(parse_conditions("default", has_image=True, pixels=False)) == 7
    assert len(parse_conditions("default", has_image=False, pixels=False)) == 5
    assert [c.label for c in parse_conditions("no_image,no_image")] == ["full input", "no image"]
    for text, msg in [("image_blur=2", "got 'image_blur=2'"), ("", "got ''"),
                      ("image_shift=two", "expected a int for image_shift, got 'two'"),
                      ("image_jitter=1.2", r"conditions: image_jitter: expected a strength in \[0, 1\), got 1.2"),
                      ("no_image+no_image=1", "got 'no_image=1'")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            parse_conditions(text)
    with pytest.raises(ValueError, match="only for a policy that reads RGB pixels.*got 'image_occlusion=0.2'"):
        parse_conditions("image_noise=0.1,image_occlusion=0.2", has_image=True, pixels=False)
    with pytest.raises(ValueError, match="--conditions: expected conditions without the image.*got 'no_image'"):
        parse_conditions("no_state,no_image", has_image=False, pixels=False, what="--conditions")


def test_image_rows_follow_what_the_policy_reads():
    from types import SimpleNamespace

    from vlafoundry.eval.robustness import image_input, robustness_conditions

    grid = SimpleNamespace(has_image=True, cfg=SimpleNamespace(vision="grid"))
    patch = SimpleNamespace(has_image=True, cfg=SimpleNamespace(vision="patch"))
    blind = SimpleNamespace(has_image=False, cfg=SimpleNamespace(vision="none"))
    env, rgb = "babyai/GoToLocal", {"image": "rgb"}
    assert image_input(grid, env) == "symbolic" and image_input(patch, env, rgb) == "rgb"
    assert image_input(blind, env) is None
    assert image_input(object(), env, rgb) == "rgb" and image_input(object(), env) == "symbolic"  # the env decides
    labels = [c.label for c in robustness_conditions(patch, env, rgb)]
    assert "image occluded 25%" in labels and "image shifted 4 px" in labels and len(labels) == 11
    assert [c.label for c in robustness_conditions(grid, env)] == [c.label for c in default_conditions(True)]
    assert not any("image" in c.label for c in robustness_conditions(blind, env))


# ------------------------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory):
    """A tiny patch (ViT) policy trained for a few steps on 20 RGB GoToLocal demonstrations."""
    from vlafoundry.cli.main import main

    root = tmp_path_factory.mktemp("pixeval")
    assert main(["data", "generate", "babyai/GoToLocal", "--episodes", "20", "--image", "rgb", "--out",
                 str(root / "ds"), "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    tiny = ["--model.vision", "patch", "--model.patch_size", "8", "--model.d_model", "32", "--model.d_ff", "64",
            "--model.num_heads", "2", "--model.num_layers", "1", "--model.vision_layers", "1",
            "--model.text_layers", "1", "--model.embed_dim", "16", "--train.batch_size", "16", "--train.steps", "4",
            "--train.warmup_steps", "1", "--train.log_every", "2", "--train.eval_every", "4",
            "--train.checkpoint_every", "4", "--train.progress", "false", "--train.threads", "1",
            "--data.val_fraction", "0.2", "--data.image", "rgb", "--data.episodes", "20"]  # fmt: skip
    assert main(["train", "--data", str(root / "ds"), "--out", str(root / "run"), *tiny]) == 0
    return root / "run"


def test_rgb_policy_robustness_report_has_the_image_rows_and_labels(rgb_run, tmp_path):
    from vlafoundry.cli.main import main

    out = tmp_path / "eval"
    conditions = "image_occlusion=0.25,image_jitter=0.3,image_shift=4,image_gaussian=0.1,no_image"
    rc = main(["eval", str(rgb_run), "--episodes", "3", "--workers", "0", "--gifs", "0", "--max-steps", "6",
               "--offline-samples", "48", "--balance-samples", "48", "--conditions", conditions, "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "eval.json").read_text())
    labels = [r["condition"] for r in res["robustness"]]
    assert labels == ["full input", "image occluded 25%", "image colour jitter s=0.3", "image shifted 4 px",
                      "image Gaussian noise σ=0.1", "no image"]  # fmt: skip
    assert all("offline action_acc" in r for r in res["robustness"])
    report = (out / "report.md").read_text()
    for label in labels:
        assert f"| {label} |" in report
    assert "Does the policy use its eyes? Of the 5 image rows" in report
    assert "| image (RGB pixels) |" in report and "Without the image (RGB pixels), action_acc" in report


def test_conditions_are_checked_against_the_policy_before_running(rgb_run, tmp_path, capsys):
    from vlafoundry.cli.main import main

    rc = main(["eval", str(rgb_run), "--conditions", "image_occlusion=2", "--out", str(tmp_path / "a")])
    assert rc == 2 and "--conditions: expected a comma list of robustness conditions" in capsys.readouterr().err
    rc = main(["eval", str(rgb_run), "--episodes", "1", "--workers", "0", "--gifs", "0", "--no-offline",
               "--conditions", "image_shift=100", "--out", str(tmp_path / "b")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "--conditions: expected image_shift below the frame's side 56, got 100" in err
    assert not (tmp_path / "b" / "eval.json").exists()
