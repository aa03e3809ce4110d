"""Training: the loop (:mod:`~vlafoundry.train.trainer`), checkpoints, configs, DDP helpers.

``load_run(path, device)`` -> (policy, experiment config, checkpoint contents) for a run folder, a ``checkpoints``
folder or one checkpoint (imported lazily: ``import vlafoundry.train.config`` stays light)."""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "load_run":
        from vlafoundry.train.trainer import load_run

        return load_run
    raise AttributeError(f"module 'vlafoundry.train' has no attribute {name!r}")
