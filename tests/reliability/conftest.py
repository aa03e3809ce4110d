"""Shared fixtures for the reliability suite (docs/reliability.md).

One small real dataset (30 BabyAI GoToLocal bot demonstrations) is generated once per session; the tiny model
settings below make a 40-step training run take about a second, so whole runs can be killed, resumed and
compared bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from vlafoundry.data import generate_dataset
from vlafoundry.train.config import ExperimentConfig, load_config

N_EPISODES = 30

#: a tiny policy and short schedule (dotted overrides of the babyai-gotolocal preset)
TINY = [
    "--model.d_model", "32", "--model.d_ff", "64", "--model.num_layers", "1", "--model.vision_layers", "0",
    "--model.text_layers", "0", "--model.embed_dim", "16",
    "--train.batch_size", "32", "--train.steps", "40", "--train.warmup_steps", "4", "--train.checkpoint_every", "5",
    "--train.eval_every", "20", "--train.log_every", "5", "--train.progress", "false", "--train.threads", "1",
    "--data.val_fraction", "0.1",
]


@pytest.fixture(scope="session")
def rel_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 GoToLocal episodes (seeds 0..29), one worker. Tests must not modify it: copy it first."""
    root = tmp_path_factory.mktemp("reliability") / "gotolocal"
    generate_dataset("babyai/GoToLocal", N_EPISODES, root, workers=1, seed=0, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture(scope="session")
def tiny_cfg() -> Callable[..., ExperimentConfig]:
    """``tiny_cfg("--train.steps", "10")`` -> the tiny ExperimentConfig with extra overrides."""

    def make(*overrides: str) -> ExperimentConfig:
        return load_config("babyai-gotolocal", TINY + list(overrides))

    return make


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> hex digest); {} if it does not exist."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def digest() -> Callable[[Path], dict[str, str]]:
    return tree_digest


def _cli_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")


@pytest.fixture(scope="session")
def cli_env() -> Callable[[], dict[str, str]]:
    """A function returning the environment for ``python -m vlafoundry`` subprocesses (one thread each)."""
    return _cli_env


def run_cli(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``python -m vlafoundry ARGS`` in a fresh interpreter (exit code, stdout, stderr)."""
    return subprocess.run([sys.executable, "-m", "vlafoundry", *args], capture_output=True, text=True,
                          env=_cli_env(), timeout=timeout)


@pytest.fixture(scope="session")
def cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    return run_cli


@pytest.fixture(autouse=True)
def _reset_check_finite():
    """``train.check_finite`` sets a process-wide switch; never let it leak into later tests."""
    from vlafoundry.nn import set_check_finite

    yield
    set_check_finite(False)
