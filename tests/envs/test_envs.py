"""vlafoundry.envs: one interface over BabyAI and Meta-World."""

from __future__ import annotations

import numpy as np
import pytest

from vlafoundry.envs import (
    EVAL_SEED_BASE,
    METAWORLD_INSTRUCTIONS,
    METAWORLD_TASKS,
    MT10_TASKS,
    EnvSpec,
    expand_env_names,
    instruction_for,
    make_env,
)


def test_expand_env_names() -> None:
    mt10 = expand_env_names("metaworld/mt10")
    assert mt10 == [f"metaworld/{t}" for t in MT10_TASKS]
    assert len(mt10) == 10 and "metaworld/push" in mt10 and "metaworld/peg-insert-side" in mt10
    assert expand_env_names("babyai/GoToLocal") == ["babyai/GoToLocal"]
    assert expand_env_names("metaworld/push-v3") == ["metaworld/push"]
    with pytest.raises(ValueError):
        expand_env_names("metaworld/not-a-task")
    with pytest.raises(ValueError):
        expand_env_names("atari/Pong")


def _rollout(env, seed: int) -> tuple[list[dict], list, dict]:
    obs = env.reset(seed=seed)
    frames, actions = [obs], []
    for _ in range(env.spec.max_episode_steps):
        a = env.expert_action()
        obs, _, term, trunc, info = env.step(a)
        frames.append(obs)
        actions.append(a)
        if term or trunc:
            break
    return frames, actions, info


def test_babyai_interface_and_expert() -> None:
    env = make_env("babyai/GoToLocal")
    assert isinstance(env.spec, EnvSpec)
    assert env.spec.action_type == "discrete" and env.spec.num_actions == 7 and env.spec.action_dim == 1
    assert env.spec.image_shape == (7, 7, 3) and env.spec.state_dim == 4 and env.spec.max_episode_steps > 0
    obs = env.reset(seed=3)
    assert set(obs) == {"image", "state", "instruction", "task"}
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (7, 7, 3)
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (4,)
    np.testing.assert_array_equal(obs["state"], np.eye(4, dtype=np.float32)[env.unwrapped.agent_dir])
    assert obs["instruction"] == env.unwrapped.mission and obs["task"] == "babyai/GoToLocal"
    frames, actions, info = _rollout(env, 3)
    assert info["success"] is True and all(isinstance(a, int) for a in actions)
    frames2, actions2, _ = _rollout(env, 3)  # same seed, same episode
    assert actions2 == actions
    assert all(np.array_equal(a["image"], b["image"]) for a, b in zip(frames, frames2))
    frame = env.render_rgb()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    with pytest.raises(ValueError):
        env.step(7)
    env.close()


def test_babyai_rgb_image() -> None:
    env = make_env("babyai/GoToLocal", image="rgb")
    obs = env.reset(seed=0)
    assert env.spec.image_shape == (56, 56, 3) and obs["image"].shape == (56, 56, 3) and obs["image"].dtype == np.uint8
    with pytest.raises(ValueError):
        make_env("babyai/GoToLocal", image="depth")


def test_metaworld_interface_and_expert() -> None:
    env = make_env("metaworld/push")
    spec = env.spec
    assert spec.action_type == "continuous" and spec.action_dim == 4 and spec.num_actions is None
    assert spec.action_low == [-1.0] * 4 and spec.action_high == [1.0] * 4
    assert spec.state_dim == 39 and spec.image_shape is None and 200 <= spec.max_episode_steps <= 500
    obs = env.reset(seed=1)
    assert "image" not in obs and obs["state"].dtype == np.float32 and obs["state"].shape == (39,)
    assert obs["instruction"] in METAWORLD_INSTRUCTIONS["push"] and obs["instruction"] == instruction_for("push", 1)
    frame = env.render_rgb()  # a corner2 camera frame for GIFs where MuJoCo can render (None otherwise)
    assert frame is None or (frame.shape == (256, 256, 3) and frame.dtype == np.uint8)
    frames, actions, info = _rollout(env, 1)
    assert info["success"] is True and len(actions) < spec.max_episode_steps
    assert all(a.dtype == np.float32 and a.shape == (4,) and np.all(np.abs(a) <= 1) for a in actions)
    frames2, _, _ = _rollout(env, 1)
    assert all(np.array_equal(a["state"], b["state"]) for a, b in zip(frames, frames2))
    with pytest.raises(ValueError):
        env.step(np.zeros(3, np.float32))
    env.close()


def test_metaworld_layouts_depend_on_seed_and_eval_seeds_are_new() -> None:
    env = make_env("metaworld/push")
    train = {tuple(env.reset(seed=s)["state"][-3:].round(5)) for s in range(10)}
    evals = {tuple(env.reset(seed=EVAL_SEED_BASE + s)["state"][-3:].round(5)) for s in range(10)}
    assert len(train) == 10 and len(evals) == 10 and not (train & evals)


def test_instructions_cover_all_tasks() -> None:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert {f"{t}-v3" for t in METAWORLD_TASKS} == set(ALL_V3_ENVIRONMENTS)
    for task, phrasings in METAWORLD_INSTRUCTIONS.items():
        assert len(set(phrasings)) >= 3, task
    # phrasing is a deterministic function of the seed and several phrasings are used
    assert {instruction_for("push", s) for s in range(30)} == set(METAWORLD_INSTRUCTIONS["push"])
    assert instruction_for("push", 5) == instruction_for("push", 5)


def test_babyai_rgb_shows_the_carried_object_in_the_agents_cell() -> None:
    """Frames are Minigrid's until the agent picks something up; then its own cell is the carried object's tile
    (as in the symbolic view), not Minigrid's triangle drawn over it."""
    from minigrid.core.grid import Grid

    env = make_env("babyai/PutNextLocal", image="rgb")
    obs, base = env.reset(seed=3), env.unwrapped
    assert np.array_equal(obs["image"], base.get_frame(tile_size=8, agent_pov=True))
    for _ in range(100):
        if base.carrying is not None:
            break
        obs = env.step(env.expert_action())[0]
    assert base.carrying is not None, "the expert picks an object up within 100 steps"
    cell = obs["image"][48:56, 24:32]  # bottom row, middle column of the 7x7 view of 8-px tiles
    assert np.array_equal(cell, Grid.render_tile(base.carrying, highlight=True, tile_size=8).astype(np.uint8))
    assert not np.array_equal(cell, base.get_frame(tile_size=8, agent_pov=True)[48:56, 24:32])
    # the rest of the frame is Minigrid's
    minigrid = base.get_frame(tile_size=8, agent_pov=True)
    mask = np.ones(obs["image"].shape[:2], bool)
    mask[48:56, 24:32] = False
    assert np.array_equal(obs["image"][mask], minigrid[mask])
