"""Shared fixtures of the serving tests: small BabyAI-shaped policies (no dataset needed) and live servers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("msgpack", reason="serving tests need the serve extra (msgpack)")
pytest.importorskip("websockets", reason="serving tests need the serve extra (websockets)")

INSTRUCTIONS = ["go to the red ball", "go to the blue key", "go to a purple box", "go to the green door"]


def make_policy(memory: str | None = "gru", **overrides):
    """A gotolocal-preset-shaped VLAPolicy (smaller), random weights, BabyAI spaces."""
    from vlafoundry.models.spec import PolicySpec
    from vlafoundry.models.vla import VLAPolicy
    from vlafoundry.nn.language import TextTokenizer
    from vlafoundry.train.config import load_config

    args = ["--model.d_model", "32", "--model.d_ff", "64", "--model.num_heads", "2", "--model.num_layers", "1",
            "--model.embed_dim", "16"]
    if memory is None:
        args += ["--model.memory", "none"]
    for k, v in overrides.items():
        args += [f"--model.{k}", str(v)]
    cfg = load_config("babyai-gotolocal", args).model
    spec = PolicySpec(env="babyai/GoToLocal", action_type="discrete", action_dim=1, num_actions=7, state_dim=4,
                      image_shape=[7, 7, 3], state_mean=[1.0, 2.0, 0.5, 3.0], state_std=[2.0, 1.0, 0.0, 4.0],
                      tasks=["babyai/GoToLocal"])
    tok = TextTokenizer.train(INSTRUCTIONS * 4, kind=cfg.tokenizer, vocab_size=cfg.tokenizer_vocab)
    torch.manual_seed(0)
    return VLAPolicy(cfg, spec, tok).eval()


def observation(n: int, rng: np.random.Generator) -> dict:
    image = np.stack([rng.integers(0, hi, size=(n, 7, 7), dtype=np.uint8) for hi in (11, 6, 3)], axis=-1)
    return {"image": image,
            "state": rng.normal(size=(n, 4)).astype(np.float32),
            "instruction": [INSTRUCTIONS[int(i)] for i in rng.integers(0, len(INSTRUCTIONS), size=n)]}


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
