"""Training-only targets added to each batch, computed from what the dataset already holds.

* ``cell_labels`` (``loss.cells``): each frame's per-cell symbols, read back from the pixels by the env family
  (:meth:`~vlafoundry.envs.EnvFamily.cell_labels`, e.g. BabyAI's tile decoder).
* ``position_labels`` (``loss.positions``): where the objects and the goal are at each step, from a replay of the
  demonstrations with the full-state observation (:mod:`vlafoundry.data.replay`,
  :meth:`~vlafoundry.envs.EnvFamily.position_labels`), standardised with the training split's mean and std.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from vlafoundry.config import ConfigError
from vlafoundry.normalize import safe_std


class BatchLabeller:
    """Adds ``cell_labels`` (from the frames) and/or ``position_labels`` (from per-step targets) to raw batches."""

    def __init__(self, cells: Callable[[np.ndarray], np.ndarray] | None = None,
                 positions: np.ndarray | None = None, episode_start: np.ndarray | None = None) -> None:
        self.cells = cells
        self.positions = positions  # (N, P) float32, standardised, indexed by global step
        self.episode_start = episode_start  # (E,) first global step of each dataset episode

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.cells is not None:
            batch["cell_labels"] = torch.from_numpy(self.cells(np.asarray(batch["image"])))
        if self.positions is not None:
            episode = np.asarray(batch["episode"], dtype=np.int64)  # (B,)
            step = np.asarray(batch["step"], dtype=np.int64)  # (B,) steps, or (B, L) whole episodes
            start = self.episode_start[episode]
            g = start.reshape(start.shape + (1,) * (step.ndim - start.ndim)) + step  # (B,) | (B, L)
            batch["position_labels"] = torch.from_numpy(self.positions[g])  # (B, P) | (B, L, P)
        return batch


def raw_positions(env: str, scheme: str, root: Any, progress: bool = True) -> np.ndarray:
    """``model.position_labels == scheme`` coordinates (N, P) of every cached step of the dataset at ``root``, in
    the simulator's units (Meta-World: metres), from :func:`vlafoundry.data.replay.full_states`."""
    from vlafoundry.data.replay import ReplayMismatch, full_states
    from vlafoundry.envs import get_family

    try:
        env_kwargs, select = get_family(env).position_labels(scheme)
        return np.asarray(select(full_states(root, env_kwargs, progress=progress)), dtype=np.float32)
    except (ValueError, ReplayMismatch) as exc:
        raise ConfigError(f"loss.positions: {exc}") from None


def position_stats(raw: np.ndarray, dataset: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (floored) of ``raw`` (N, P) over the steps of ``dataset``'s split: the standardisation of the
    position targets (:func:`position_targets`)."""
    own = raw[dataset.step_ids]  # (N_split, P)
    return own.mean(0), safe_std(own.std(0))


def position_targets(env: str, scheme: str, dataset: Any, progress: bool = True) -> np.ndarray:
    """``model.position_labels == scheme`` targets (N, P) of every cached step of ``dataset`` (a
    :class:`~vlafoundry.data.DemoDataset`), standardised with the mean and std over its split's steps."""
    raw = raw_positions(env, scheme, dataset.root, progress=progress)
    mean, std = position_stats(raw, dataset)
    return ((raw - mean) / std).astype(np.float32)


def make_labeller(env: str, policy: Any, loss_cfg: Any, dataset: Any) -> BatchLabeller | None:
    """The labeller of a run's objectives (None when neither ``loss.cells`` nor ``loss.positions`` is on)."""
    cells = positions = None
    if loss_cfg.cells > 0:
        from vlafoundry.envs import get_family

        try:
            cells = get_family(env).cell_labels(policy.cfg.cell_labels, policy.spec.image_shape)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    if loss_cfg.positions > 0:
        positions = position_targets(env, policy.cfg.position_labels, dataset)
    if cells is None and positions is None:
        return None
    return BatchLabeller(cells, positions, np.asarray(dataset.episode_starts, dtype=np.int64))


__all__ = ["BatchLabeller", "make_labeller", "position_stats", "position_targets", "raw_positions"]
