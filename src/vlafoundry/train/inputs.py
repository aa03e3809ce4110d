"""What a training run reads: its dataset (generated and cached when missing), the train / held-out splits of it,
and saved checkpoints (:func:`policy_from_checkpoint`, also ``load_run``: policy, experiment config and the
checkpoint's contents). Importable from :mod:`vlafoundry.train.trainer` as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlafoundry.config import from_dict, to_dict
from vlafoundry.models import Policy, PolicyLoadError
from vlafoundry.models.base import build_from_folder
from vlafoundry.train import checkpoint as ckpt
from vlafoundry.train.config import ExperimentConfig
from vlafoundry.train.distributed import DistInfo, barrier


def ensure_dataset(cfg: ExperimentConfig, dist_info: DistInfo, progress: bool = True) -> Path:
    """The dataset directory for ``cfg.data``, generating (rank 0 only) and caching it when missing.

    A complete dataset already in the cache is reused as it is; an interrupted generation is resumed.
    """
    from vlafoundry.data import META_FILE, generate_dataset
    from vlafoundry.data.lerobot import is_lerobot_dataset

    root = cfg.data.dataset_dir()
    if cfg.data.path is None and dist_info.is_main and not (root / META_FILE).exists():
        generate_dataset(cfg.data.env, cfg.data.episodes, root, workers=cfg.data.workers, seed=cfg.data.seed,
                         image=cfg.data.image, progress=progress, action_noise=cfg.data.action_noise,
                         hold_out_pairs=cfg.data.hold_out_pairs,
                         hold_out_scope=cfg.data.hold_out_scope, camera=cfg.data.camera,
                         image_size=cfg.data.image_size, proprio=cfg.data.proprio, env_cache=cfg.data.env_cache)
    barrier(dist_info)
    if not (root / META_FILE).exists() and not is_lerobot_dataset(root):
        raise FileNotFoundError(f"data.path: {root} is not a vlafoundry dataset (no {META_FILE}) nor a LeRobot v3.0 "
                                "one (no meta/info.json); create one with `vlafoundry data generate`")
    return root


def load_datasets(cfg: ExperimentConfig, root: Path) -> tuple[Any, Any | None]:
    from vlafoundry.data import make_dataset

    kw = dict(val_fraction=cfg.data.val_fraction, split_seed=cfg.data.seed, **cfg.model.dataset_view())
    train = make_dataset(root, split="train", **kw)
    val = make_dataset(root, split="val", **kw) if cfg.data.val_fraction > 0 else None
    if val is not None and len(val) == 0:
        val = None
    return train, val


def policy_from_checkpoint(path: str | Path, device: torch.device | str = "cpu"
                           ) -> tuple[Policy, ExperimentConfig, dict[str, Any]]:
    """Rebuild a policy (type and architecture from the saved config, processor state from processor.json), load
    its weights, in eval mode; also the run's experiment config and the checkpoint's contents (``load_run``)."""
    data = ckpt.load_checkpoint(path)
    cfg = from_dict(ExperimentConfig, data["config"])
    try:
        policy = build_from_folder(data["dir"], config=to_dict(cfg.model))
    except PolicyLoadError as exc:
        raise ckpt.CheckpointError(str(exc)) from None
    return policy.to(device).eval(), cfg, data


load_run = policy_from_checkpoint
