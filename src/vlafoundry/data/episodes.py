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

Episode = dict[str, Any]


def to_episode_buffer(ep: Episode, episode_id: int, family: str) -> Any:
    """An ``EpisodeBuffer`` for ``minari.create_dataset_from_buffers`` (no jax needed)."""
    from minari.data_collector import EpisodeBuffer

    n1 = len(ep["state"])
    mission = [ep["instruction"]] * n1
    if family == "babyai":
        obs = {
            "direction": np.argmax(ep["state"], axis=1).astype(np.int64),  # (n+1,)
            "image": ep["image"],
            "mission": mission,
        }
    else:
        obs = {"observation": ep["state"], "mission": mission}
    return EpisodeBuffer(
        id=episode_id,
        seed=int(ep["seed"]),
        options={"task": ep["task"]},
        observations=obs,
        actions=ep["action"],
        rewards=ep["reward"],
        terminations=ep["terminated"],
        truncations=ep["truncated"],
        infos={},
    )


def _one_hot(direction: np.ndarray, n: int = 4) -> np.ndarray:
    out = np.zeros((len(direction), n), dtype=np.float32)
    out[np.arange(len(direction)), np.asarray(direction, dtype=np.int64)] = 1.0
    return out


def infer_env_name(minari_metadata: dict[str, Any]) -> str | None:
    """``babyai/<Level>`` or ``metaworld/<task>`` from a Minari dataset's recorded env spec, if recognisable."""
    import json

    raw = minari_metadata.get("env_spec")
    if not raw:
        return None
    spec = json.loads(raw) if isinstance(raw, str) else raw
    env_id = str(spec.get("id", ""))
    if env_id.startswith("BabyAI-") and env_id.endswith("-v0"):
        return f"babyai/{env_id[len('BabyAI-'):-len('-v0')]}"
    kwargs = spec.get("kwargs") or {}
    if env_id.startswith("Meta-World/") and kwargs.get("env_name"):
        return f"metaworld/{str(kwargs['env_name']).removesuffix('-v3')}"
    return None


def open_minari(dataset_dir: str | os.PathLike[str]) -> Any:
    """A ``MinariDataset`` from a dataset directory (the one holding ``data/``)."""
    import minari

    return minari.MinariDataset(Path(dataset_dir) / "data")


def iterate_minari_episodes(dataset: Any, family: str, default_task: str) -> Iterator[Episode]:
    """Episodes of a Minari dataset (ours or a user's) in our in-memory form.

    BabyAI: observations with ``direction``/``image``/``mission`` (Minigrid's layout).
    Meta-World: a ``Dict`` with ``observation``/``mission`` (ours) or a plain 39-D ``Box`` (a user's; the
    instruction is then the task's first phrasing).
    """
    from vlafoundry.envs.metaworld import instruction_for

    n = dataset.total_episodes
    metas = list(dataset.storage.get_episode_metadata(range(n)))
    for ep_meta, ep in zip(metas, dataset.iterate_episodes()):
        obs = ep.observations
        options = ep_meta.get("options") if isinstance(ep_meta.get("options"), dict) else {}
        task = str(options.get("task", default_task))
        seed = int(ep_meta["seed"]) if ep_meta.get("seed") is not None else -1
        if family == "babyai":
            if not isinstance(obs, dict) or not {"direction", "image", "mission"} <= set(obs):
                raise ValueError("BabyAI Minari dataset: expected observations with direction, image and mission")
            image = np.asarray(obs["image"], dtype=np.uint8)
            state = _one_hot(np.asarray(obs["direction"]))
            instruction = str(obs["mission"][0])
        else:
            if isinstance(obs, dict):
                state = np.asarray(obs["observation"], dtype=np.float32)
                instruction = str(obs["mission"][0]) if "mission" in obs else instruction_for(task.split("/", 1)[1], None)
            else:
                state = np.asarray(obs, dtype=np.float32)
                instruction = instruction_for(task.split("/", 1)[1], None)
            image = None
        actions = np.asarray(ep.actions)
        actions = actions.astype(np.int64) if family == "babyai" else actions.astype(np.float32)
        yield {
            "seed": seed,
            "task": task,
            "instruction": instruction,
            "image": image,
            "state": state,
            "action": actions,
            "reward": np.asarray(ep.rewards, dtype=np.float32),
            "terminated": np.asarray(ep.terminations, dtype=bool),
            "truncated": np.asarray(ep.truncations, dtype=bool),
        }
