"""The quickstart-sized policy the serving benchmarks use: a trained run if given, else one built (random weights,
the same network and acting cost) from the babyai-gotolocal preset on a tiny generated dataset."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any


def quickstart_policy(run: str | None) -> tuple[Any, str]:
    """(policy, description)."""
    if run:
        from vlafoundry.train import load_run

        policy, _, _ = load_run(run)
        return policy, f"trained run {run}"
    from vlafoundry.data import DemoDataset
    from vlafoundry.data.generate import generate_dataset
    from vlafoundry.models.vla import VLAPolicy
    from vlafoundry.train.config import load_config

    cfg = load_config("babyai-gotolocal", [])
    root = Path(tempfile.mkdtemp(prefix="vlafoundry-bench-")) / "ds"
    generate_dataset("babyai/GoToLocal", 20, root, workers=1, progress=False)
    policy = VLAPolicy.from_dataset(cfg.model, DemoDataset(root, split="train"))
    n = sum(p.numel() for p in policy.parameters())
    return policy.eval(), (f"babyai-gotolocal preset network (d_model {cfg.model.d_model}, memory "
                           f"{cfg.model.memory}, {n / 1e6:.2f}M parameters) built on 20 generated episodes, "
                           f"random weights (no trained run given)")
