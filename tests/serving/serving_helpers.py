"""Helpers of the serving tests: small BabyAI-shaped policies (no dataset needed) and valid observations."""

from __future__ import annotations

import numpy as np
import torch

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
