"""A small real BabyAI GoToLocal dataset (bot demonstrations), generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlafoundry.data import generate_dataset
from vlafoundry.train.config import load_config

TINY = [
    "--model.d_model", "32", "--model.d_ff", "64", "--model.num_heads", "2", "--model.num_layers", "1",
    "--model.vision_layers", "1", "--model.text_layers", "1", "--model.embed_dim", "16",
    "--train.batch_size", "32", "--train.warmup_steps", "2", "--train.log_every", "2", "--train.eval_every", "4",
    "--train.checkpoint_every", "4", "--train.progress", "false", "--train.threads", "1",
    "--data.val_fraction", "0.1",
]


@pytest.fixture(scope="session")
def gotolocal_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gotolocal") / "ds"
    generate_dataset("babyai/GoToLocal", 40, root, workers=1, seed=0, progress=False)
    return root


@pytest.fixture()
def tiny_cfg():
    def make(*overrides: str):
        return load_config("babyai-gotolocal", TINY + list(overrides))

    return make


@pytest.fixture()
def tiny_args() -> list[str]:
    return list(TINY)
