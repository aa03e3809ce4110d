"""Shared small datasets (generated once per session; a few BabyAI episodes each)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from vlafoundry.data import generate_dataset

N_EPISODES = 8


@pytest.fixture(scope="session")
def babyai_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 GoToLocal episodes, seeds 0..7, one worker, 2-episode shards."""
    root = tmp_path_factory.mktemp("babyai") / "ds"
    generate_dataset("babyai/GoToLocal", N_EPISODES, root, workers=1, seed=0, shard_size=2, progress=False)
    return root


@pytest.fixture(scope="session")
def tree_digest():
    """A function: root -> sha256 of every file under root (except the local cache stat file)."""
    return _tree_digest


def _tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under root, except the local cache stat file."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "source_stat.json"
    }
