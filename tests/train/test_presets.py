"""Every shipped preset, at its real model size, builds on a few real episodes of its own environment, pretrains
and trains a step with a finite loss, and acts: a preset broken at build time (bad key combination, an env that
does not generate, an objective the model cannot compute) fails here, not after an hour of data generation."""

from __future__ import annotations

import math

import pytest
import torch

import numpy as np

from vlafoundry.data import generate_dataset
from vlafoundry.envs import expand_env_names, get_family, make_env
from vlafoundry.train.config import list_presets, load_config
from vlafoundry.train.trainer import Trainer

SHORT = ["--pretrain.steps", "1", "--pretrain.batch_size", "4", "--train.steps", "1", "--train.batch_size", "4",
         "--train.eval_every", "100", "--train.checkpoint_every", "1",
         "--train.warmup_steps", "0", "--pretrain.warmup_steps", "0"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    cache: dict[str, object] = {}

    def get(env: str, image: str = "symbolic"):
        if (env, image) not in cache:
            root = tmp_path_factory.mktemp(f"{env.replace('/', '-')}-{image}") / "ds"
            episodes = 10 if env == "metaworld/mt10" else 3
            generate_dataset(env, episodes, root, workers=1, seed=0, image=image, progress=False)
            cache[env, image] = root
        return cache[env, image]

    return get


@pytest.mark.parametrize("name", list_presets())
def test_preset_builds_trains_and_acts(name, datasets, tmp_path):
    cfg = load_config(name, SHORT)
    root = datasets(cfg.data.env, cfg.data.image)
    torch.manual_seed(0)
    pre = Trainer(cfg, tmp_path / "pre", phase="pretrain", dataset_root=root).fit()
    assert all(math.isfinite(v) for v in pre["last"].values())
    tr = Trainer(cfg, tmp_path / "train", init_from=tmp_path / "pre", dataset_root=root)
    s = tr.fit()
    assert s["step"] == 1 and math.isfinite(s["last"]["loss"])
    assert tr.policy.cfg.d_model == load_config(name).model.d_model  # the preset's real size, not a tiny one
    # acts in its environment: a few closed-loop steps of valid actions on a fresh (unseen) seed
    policy = tr.policy.eval()
    policy.reset()
    name = expand_env_names(cfg.data.env)[0]
    env = make_env(name, **get_family(name).env_kwargs(cfg.data))  # the observation mode it was trained on
    obs = env.reset(seed=10**9)
    for _ in range(3):
        batch = {k: (np.asarray(v)[None] if k != "instruction" else [v]) for k, v in obs.items()}
        with torch.no_grad():
            action = policy.select_action(batch)[0]
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    env.close()
