"""In-memory episodes and their conversion to and from Minari.

An episode is a plain dict of NumPy arrays (``n`` = number of actions):

    seed int, task str, instruction str,
    image uint8 (n+1, H, W, C) or None, state float32 (n+1, S),
    action int64 (n,) | float32 (n, A), reward float32 (n,), terminated bool (n,), truncated bool (n,)

Observations include the final one (Minari's convention: ``n + 1`` observations for ``n`` steps).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.envs import EnvFamily, get_family
from vlafoundry.envs import infer_env_name as _infer_env_name

Episode = dict[str, Any]


def to_episode_buffer(ep: Episode, episode_id: int, family: str | EnvFamily) -> Any:
    """An ``EpisodeBuffer`` for ``minari.create_dataset_from_buffers`` (no jax needed); the observations in the
    layout of ``family`` (an :class:`EnvFamily` or its name, :meth:`EnvFamily.to_minari_observations`)."""
    from minari.data_collector import EpisodeBuffer

    fam = get_family(family) if isinstance(family, str) else family
    return EpisodeBuffer(
        id=episode_id,
        seed=int(ep["seed"]),
        options={"task": ep["task"]},
        observations=fam.to_minari_observations(ep),
        actions=ep["action"],
        rewards=ep["reward"],
        terminations=ep["terminated"],
        truncations=ep["truncated"],
        infos={},
    )


def infer_env_name(minari_metadata: dict[str, Any]) -> str | None:
    """The env name (``babyai/<Level>``, ``metaworld/<task>``, ...) of a Minari dataset from its recorded env spec,
    if a registered family recognises it (:meth:`EnvFamily.env_name_from_minari`)."""
    return _infer_env_name(minari_metadata)


def open_minari(dataset_dir: str | os.PathLike[str]) -> Any:
    """A ``MinariDataset`` from a dataset directory (the one holding ``data/``)."""
    import minari

    return minari.MinariDataset(Path(dataset_dir) / "data")


def iterate_minari_episodes(dataset: Any, family: str | EnvFamily, default_task: str) -> Iterator[Episode]:
    """Episodes of a Minari dataset (ours or a user's) in our in-memory form.

    ``family`` (an :class:`EnvFamily` or its name) reads the observations
    (:meth:`EnvFamily.from_minari_observations`); actions are int64 under a ``Discrete`` action space, else float32.
    """
    from gymnasium import spaces

    fam = get_family(family) if isinstance(family, str) else family
    discrete = isinstance(dataset.action_space, spaces.Discrete)
    n = dataset.total_episodes
    metas = list(dataset.storage.get_episode_metadata(range(n)))
    for ep_meta, ep in zip(metas, dataset.iterate_episodes()):
        options = ep_meta.get("options") if isinstance(ep_meta.get("options"), dict) else {}
        task = str(options.get("task", default_task))
        seed = int(ep_meta["seed"]) if ep_meta.get("seed") is not None else -1
        state, image, instruction = fam.from_minari_observations(ep.observations, task)
        actions = np.asarray(ep.actions)
        yield {
            "seed": seed,
            "task": task,
            "instruction": instruction,
            "image": image,
            "state": state,
            "action": actions.astype(np.int64) if discrete else actions.astype(np.float32),
            "reward": np.asarray(ep.rewards, dtype=np.float32),
            "terminated": np.asarray(ep.terminations, dtype=bool),
            "truncated": np.asarray(ep.truncations, dtype=bool),
        }
