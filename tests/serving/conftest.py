"""Fixtures of the serving tests: live servers on 127.0.0.1 and a tiny trained run."""

from __future__ import annotations

import pytest


@pytest.fixture
def served():
    """served(policy, **config) -> a running PolicyServer on 127.0.0.1 (random port); stopped afterwards."""
    from vlafoundry.serving.server import PolicyServer, ServerConfig

    started = []

    def start(policy, **cfg):
        srv = PolicyServer(policy, ServerConfig(host="127.0.0.1", port=0, **cfg)).start_background()
        started.append(srv)
        return srv

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A tiny gotolocal-preset policy (GRU memory, sampled actions) trained for a few steps on 12 demonstrations."""
    from vlafoundry.data.generate import generate_dataset
    from vlafoundry.train.config import load_config
    from vlafoundry.train.trainer import run_phase

    tmp = tmp_path_factory.mktemp("served")
    generate_dataset("babyai/GoToLocal", 12, tmp / "ds", workers=1, progress=False)
    cfg = load_config("babyai-gotolocal", [
        "--model.d_model", "32", "--model.d_ff", "64", "--model.num_heads", "2", "--model.num_layers", "1",
        "--model.embed_dim", "16", "--train.batch_size", "8", "--train.steps", "4", "--train.warmup_steps", "1",
        "--train.checkpoint_every", "4", "--train.eval_every", "4", "--train.log_every", "2",
        "--train.progress", "false", "--train.threads", "1", "--data.val_fraction", "0.2",
        "--data.path", str(tmp / "ds"),
    ])  # fmt: skip
    run = tmp / "run"
    run_phase(cfg, run)
    return run
