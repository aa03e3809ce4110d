"""Meta-World camera observations: frame shapes, hand proprioception, the expert under rgb, the GL backend choice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlafoundry.config import ConfigError
from vlafoundry.envs import make_env, render
from vlafoundry.envs.metaworld import HAND_DIM, STATE_DIM, parse_cameras, resolve_proprio

needs_gl = pytest.mark.skipif(render.rendering_error() is not None,
                              reason=f"no MuJoCo GL backend here: {render.rendering_error()}")


@needs_gl
def test_rgb_observation_shapes_one_and_two_cameras() -> None:
    one = make_env("metaworld/reach", image="rgb", image_size=32)
    obs = one.reset(seed=0)
    assert obs["image"].shape == (32, 32, 3) and obs["image"].dtype == np.uint8
    assert one.spec.image_shape == (32, 32, 3) and obs["image"].std() > 0
    assert obs["state"].shape == (HAND_DIM,) and one.spec.state_dim == HAND_DIM  # auto -> hand with images
    two = make_env("metaworld/reach", image="rgb", camera="corner2,topview", image_size=24, proprio="full")
    obs2 = two.reset(seed=0)
    assert obs2["image"].shape == (2, 24, 24, 3) and two.spec.image_shape == (2, 24, 24, 3)
    assert obs2["state"].shape == (STATE_DIM,)
    assert not np.array_equal(obs2["image"][0], obs2["image"][1])  # two different views
    step_obs = two.step(np.zeros(4, np.float32))[0]
    assert step_obs["image"].shape == (2, 24, 24, 3)
    one.close()
    two.close()


@needs_gl
def test_hand_proprio_expert_solves_reach_from_rgb_and_frames_follow_the_arm() -> None:
    env = make_env("metaworld/reach", image="rgb", image_size=32, proprio="hand")
    full = make_env("metaworld/reach")
    obs, ref = env.reset(seed=5), full.reset(seed=5)
    np.testing.assert_allclose(obs["state"], ref["state"][:HAND_DIM])  # hand xyz + gripper, nothing else
    first = obs["image"].copy()
    success = False
    for _ in range(env.spec.max_episode_steps):
        obs, _, terminated, truncated, info = env.step(env.expert_action())  # the expert reads the full state
        success = success or info["success"]
        if terminated or truncated:
            break
    assert success
    assert np.abs(obs["image"].astype(int) - first.astype(int)).sum() > 0  # the arm moved, the frame changed
    env.close()
    full.close()


def _frame_sum(_: int) -> int:
    env = make_env("metaworld/reach", image="rgb", image_size=16)
    return int(env.reset(seed=0)["image"].sum())


@needs_gl
def test_forked_workers_render_after_the_parent_rendered() -> None:
    import multiprocessing as mp

    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork start method on this platform")
    expected = _frame_sum(0)  # the parent holds a GL context now
    with mp.get_context("fork").Pool(2) as pool:  # generation and evaluation fork their env workers
        got = pool.map_async(_frame_sum, [0, 1]).get(timeout=120)
    assert got == [expected, expected]


@needs_gl
def test_render_rgb_is_a_camera_frame_in_both_modes() -> None:
    for kwargs in ({}, {"image": "rgb", "image_size": 16}):
        env = make_env("metaworld/reach", **kwargs)
        env.reset(seed=0)
        frame = env.render_rgb()
        assert frame is not None and frame.shape == (256, 256, 3) and frame.dtype == np.uint8 and frame.std() > 0
        env.close()


def test_object_and_goal_positions_still_vary_with_the_seed() -> None:
    env = make_env("metaworld/push")
    a, b = env.reset(seed=1)["state"], env.reset(seed=2)["state"]
    assert not np.allclose(a[4:7], b[4:7]) or not np.allclose(a[36:39], b[36:39])
    env.close()


def test_missing_backend_error_names_the_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(render.ERROR_VAR, "")  # recorded, so that teardown restores both variables
    monkeypatch.delenv(render.ERROR_VAR)
    monkeypatch.setenv("MUJOCO_GL", "")
    monkeypatch.delenv("MUJOCO_GL")
    monkeypatch.delitem(sys.modules, "mujoco", raising=False)  # as in a fresh process, before mujoco is imported
    saved = (render._backend, render._error, render._configured)
    try:
        tried = []
        got = render.configure_gl(probe=lambda b: (tried.append(b), (False, f"no lib{b}"))[1], force=True)
        assert got is None and tried == ["egl", "osmesa"]
        with pytest.raises(render.RenderingUnavailable) as err:
            render.require_rendering()
        message = str(err.value)
        for package in ("libegl1", "libegl-mesa0", "libgl1-mesa-dri", "libosmesa6", "MUJOCO_GL", "no libegl"):
            assert package in message
        import os

        assert os.environ["MUJOCO_GL"] == "disable"  # mujoco still imports; state-only envs keep working
    finally:
        render._backend, render._error, render._configured = saved


def test_set_mujoco_gl_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYOPENGL_PLATFORM", "osmesa")  # recorded, so that teardown restores it
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    saved = (render._backend, render._error, render._configured)
    try:
        got = render.configure_gl(probe=lambda b: pytest.fail("probed despite MUJOCO_GL"), force=True)
        assert got == "osmesa" or "PyOpenGL was imported" in render.rendering_error()
        monkeypatch.setenv("MUJOCO_GL", "disable")
        assert render.configure_gl(force=True) is None and "MUJOCO_GL" in render.rendering_error()
    finally:
        render._backend, render._error, render._configured = saved


def test_pyopengl_imported_for_another_platform_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYOPENGL_PLATFORM", "glx")
    monkeypatch.setitem(sys.modules, "OpenGL", object())
    message = render._pyopengl_conflict("egl")
    assert message is not None and "PYOPENGL_PLATFORM=egl" in message
    monkeypatch.setenv("PYOPENGL_PLATFORM", "egl")
    assert render._pyopengl_conflict("egl") is None


def test_camera_and_proprio_validation() -> None:
    assert parse_cameras("corner2, topview") == ("corner2", "topview")
    for bad in ("", "corner2,", "nope", "corner2,corner2"):
        with pytest.raises(ValueError, match="camera"):
            parse_cameras(bad)
    assert resolve_proprio("auto", "rgb") == "hand" and resolve_proprio("auto", "symbolic") == "full"
    with pytest.raises(ValueError, match="proprio"):
        resolve_proprio("joints", "rgb")


def test_data_config_options_validate_and_name_the_cache_dir() -> None:
    from vlafoundry.train.config import DataConfig

    default = DataConfig(env="metaworld/reach", image="rgb")
    assert default.dataset_dir().name == "metaworld-reach-rgb-n1000-s0"
    other = DataConfig(env="metaworld/reach", image="rgb", camera="corner2,topview", image_size=96, proprio="full")
    assert other.dataset_dir().name == "metaworld-reach-rgb-camcorner2+topview-px96-pfull-n1000-s0"
    with pytest.raises(ConfigError, match="data.camera"):
        DataConfig(env="metaworld/reach", image="rgb", camera="nope")
    with pytest.raises(ConfigError, match="data.image_size"):
        DataConfig(env="metaworld/reach", image="rgb", image_size=4)
    with pytest.raises(ConfigError, match="data.proprio"):
        DataConfig(env="metaworld/reach", proprio="joints")
    with pytest.raises(ConfigError, match="data.camera: babyai envs have no camera option"):
        DataConfig(env="babyai/GoToLocal", camera="topview")
    from vlafoundry.envs import get_family

    kw = get_family("metaworld/reach").env_kwargs(other)
    assert kw == {"image": "rgb", "camera": "corner2,topview", "image_size": 96, "proprio": "full"}


def test_dataset_metadata_carries_the_camera_options() -> None:
    from vlafoundry.train.config import dataset_facts

    facts = dataset_facts({"env": {"name": "metaworld/reach", "image": "rgb"},
                           "generation": {"seed": 0, "camera": "corner3", "image_size": 48, "proprio": "hand"}})
    assert facts["camera"] == "corner3" and facts["image_size"] == 48 and facts["proprio"] == "hand"


@needs_gl
def test_cli_generates_an_rgb_dataset(tmp_path: Path) -> None:
    out = tmp_path / "reach"
    res = subprocess.run([sys.executable, "-m", "vlafoundry.cli.main", "data", "generate", "metaworld/reach-v3",
                          "--episodes", "2", "--image", "rgb", "--image-size", "32", "--out", str(out),
                          "--no-progress"], capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, res.stderr
    meta = json.loads((out / "vlafoundry.json").read_text())
    assert meta["env"]["image"] == "rgb" and meta["env"]["spec"]["image_shape"] == [32, 32, 3]
    assert meta["env"]["spec"]["state_dim"] == HAND_DIM and meta["generation"]["camera"] == "corner2"
    from vlafoundry.data import DemoDataset

    ds = DemoDataset(out)
    assert ds.image_shape == (32, 32, 3)
    import minari

    from vlafoundry.data.format import minari_datasets_path

    with minari_datasets_path(out / meta["minari"]["datasets_path"]):
        episode = next(minari.load_dataset(meta["minari"]["dataset_id"]).iterate_episodes())
    assert episode.observations["image"].shape[1:] == (32, 32, 3)
    assert episode.observations["image"].dtype == np.uint8
