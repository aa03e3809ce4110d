"""What the evaluation pipeline (:mod:`vlafoundry.eval.pipeline`) reads from a run: its folder, the seeds its
demonstrations were generated from (kept out of the evaluation seeds) and the held-out split of its dataset.
Importable from :mod:`vlafoundry.eval.pipeline` as before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

Log = Callable[[str], None]


def run_dir_of(checkpoint: Path) -> Path:
    """Run folder of a checkpoint path: RUN for RUN or RUN/checkpoints/step_X, else the checkpoint folder."""
    checkpoint = Path(checkpoint).resolve()
    if (checkpoint / "checkpoints").is_dir():
        return checkpoint
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return checkpoint if checkpoint.is_dir() else checkpoint.parent


def _cfg_get(cfg: Any, *path: str, default: Any = None) -> Any:
    cur = cfg
    for key in path:
        if cur is None:
            return default
        cur = cur.get(key) if isinstance(cur, dict) else getattr(cur, key, None)
    return default if cur is None else cur


def training_seed_ranges(cfg: Any) -> list[tuple[int, int]] | None:
    """The seeds the training demonstrations were generated from, ``[(first, end)]``: every seed the expert was
    given (``counts.seeds_used`` in the dataset's metadata, which counts the seeds it failed on too) when the
    dataset is on disk, else ``data.seed`` .. ``data.seed + data.episodes``; ``None`` when the config says neither."""
    from vlafoundry.data import META_FILE
    from vlafoundry.io import read_json

    seed, episodes = _cfg_get(cfg, "data", "seed"), _cfg_get(cfg, "data", "episodes")
    if not episodes:
        return None
    start, used = int(seed or 0), int(episodes)
    data = getattr(cfg, "data", None)
    root = data.dataset_dir() if data is not None and hasattr(data, "dataset_dir") else None
    if root is not None and (Path(root) / META_FILE).is_file():
        meta = read_json(Path(root) / META_FILE)
        start = int(meta.get("generation", {}).get("seed", start))
        used = int(meta.get("counts", {}).get("seeds_used", used))
    return [(start, start + used)]


def offline_dataset(cfg: Any, wanted: bool | None, notes: list[str]) -> Any:
    """The held-out split of the checkpoint's dataset, or None (with a note) when offline metrics are skipped.

    ``wanted`` None: use it when it exists locally; True: it must exist (FileNotFoundError otherwise); False: skip.
    """
    if wanted is False:
        return None
    from vlafoundry.data import META_FILE, make_dataset

    data = getattr(cfg, "data", None)
    root = data.dataset_dir() if data is not None and hasattr(data, "dataset_dir") else None
    if root is None or not (Path(root) / META_FILE).exists():
        msg = (f"the training dataset is not available locally ({root}); create it with `vlafoundry data generate` "
               "or pass --no-offline")  # fmt: skip
        if wanted:
            raise FileNotFoundError(msg)
        notes.append(f"no offline metrics: {msg}")
        return None
    if not data.val_fraction > 0:
        msg = "the checkpoint was trained without a held-out split (data.val_fraction = 0)"
        if wanted:
            raise FileNotFoundError(msg)
        notes.append(f"no offline metrics: {msg}")
        return None
    ds = make_dataset(root, split="val", val_fraction=data.val_fraction, split_seed=data.seed,
                      **cfg.model.dataset_view())  # fmt: skip
    if len(ds) == 0:
        if wanted:
            raise FileNotFoundError(f"the held-out split of {root} is empty")
        notes.append(f"no offline metrics: the held-out split of {root} is empty")
        return None
    return ds
