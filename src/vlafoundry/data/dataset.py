"""PyTorch datasets over demonstration steps, served from the memory-mapped training cache."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vlafoundry.data.cache import (
    CACHE_META,
    cache_has_images,
    cache_image_shape,
    load_cache_arrays,
    open_cache_images,
)
from vlafoundry.data.collate import collate, unbatch
from vlafoundry.data.format import read_json, stats_from_json
from vlafoundry.data.frames import CorruptFramesError
from vlafoundry.data.source import ensure_cache, rebuild_cache, resolve_source
from vlafoundry.envs.spec import EnvSpec
from vlafoundry.normalize import safe_std


def _to_tensors(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """NumPy arrays -> tensors. Inside a DataLoader worker all tensors are views of ONE storage, so the
    batch crosses the process boundary as one shared-memory segment instead of one per key (that
    per-segment cost, not the indexing, is what limits a worker's samples/s)."""
    if torch.utils.data.get_worker_info() is None:
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    offsets, total = {}, 0
    for k, v in arrays.items():
        offsets[k] = total
        total += (v.nbytes + 7) // 8 * 8  # keep every view 8-byte aligned
    buf = torch.empty(total, dtype=torch.uint8)
    raw = buf.numpy()
    out = {}
    for k, v in arrays.items():
        v = np.ascontiguousarray(v)
        o = offsets[k]
        raw[o : o + v.nbytes] = v.reshape(-1).view(np.uint8)
        out[k] = buf[o : o + v.nbytes].view(_TORCH_DTYPES[v.dtype]).view(v.shape)
    return out


_TORCH_DTYPES = {
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.bool_): torch.bool,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.float32): torch.float32,
}


def split_episodes(num_episodes: int, split: str, val_fraction: float, split_seed: int) -> np.ndarray:
    """Sorted episode indices of ``split``: a seeded permutation puts ``round(E*val_fraction)`` in val."""
    if split not in ("train", "val", "all"):
        raise ValueError(f"split: expected 'train', 'val' or 'all', got {split!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a value in [0, 1), got {val_fraction}")
    everything = np.arange(num_episodes, dtype=np.int64)
    if split == "all":
        return everything
    n_val = int(round(num_episodes * val_fraction))
    if val_fraction > 0 and num_episodes >= 2:
        n_val = min(max(n_val, 1), num_episodes - 1)
    perm = np.random.default_rng(split_seed).permutation(num_episodes)
    chosen = perm[:n_val] if split == "val" else perm[n_val:]
    return np.sort(chosen).astype(np.int64)


class DemoDataset(Dataset):
    """Steps of expert demonstrations with observation history and action chunks.

    ``ds[i]`` is step ``i`` of the split: ``history`` frames ending at the step (``obs_mask`` False for frames
    before the episode start; those frames are zeros) and the ``chunk`` actions starting at it
    (``action_mask`` False past the episode end; those actions are zeros). See docs/data.md.

    Args:
        root: a vlafoundry dataset directory, a Minari dataset directory, or a local Minari dataset id.
        split: ``"train"``, ``"val"`` or ``"all"``; split by episode, from ``split_seed``.
        val_fraction: fraction of episodes held out as ``"val"``.
        history: T, number of observation frames per sample.
        anchor_first: the oldest of the T frames is always the episode's first frame (the view in which the
            instruction was given, e.g. "the ball on your left"), the other T-1 are the latest; needs T >= 2.
        chunk: K, number of future actions per sample.
        normalize: standardise ``state`` with the stored statistics ((x - mean) / std, std floored at 1e-6).
        transform: applied to each sample, or to the whole batch in ``__getitems__`` if it has ``batched=True``.
        normalize_action: also standardise continuous actions (off by default; Meta-World actions are
            already in [-1, 1]); undo with :meth:`denormalize_action`.
        env_name: the env of an external Minari dataset whose metadata does not say it.
        cache_dir: where to keep the training cache (default: ``root/cache``).
        image_ram_budget: bytes of decoded frames this dataset may hold in RAM (default: ``VLAFOUNDRY_IMAGE_RAM_MB``
            or 4 GiB). The split's frames are inflated once when the dataset opens if they fit (forked DataLoader
            workers share them), else each batch inflates its own frames (docs/data.md, "Storage").
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        val_fraction: float = 0.1,
        split_seed: int = 0,
        history: int = 1,
        chunk: int = 1,
        normalize: bool = False,
        transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        normalize_action: bool = False,
        env_name: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        anchor_first: bool = False,
        image_ram_budget: int | None = None,
    ) -> None:
        if int(history) < 1:
            raise ValueError(f"history: expected >= 1, got {history}")
        if anchor_first and int(history) < 2:
            raise ValueError(f"anchor_first: needs history >= 2 (the first frame plus the latest), got {history}")
        if int(chunk) < 1:
            raise ValueError(f"chunk: expected >= 1, got {chunk}")
        src = resolve_source(root, env_name=env_name, cache_dir=cache_dir)
        cache_meta = ensure_cache(src)
        self.root = Path(root)
        self.cache_dir = src.cache_dir
        self.metadata: dict[str, Any] = src.metadata
        env = self.metadata["env"]
        self.env_name: str = env["name"]
        self.tasks: list[str] = list(cache_meta["tasks"])
        self.instructions: list[str] = list(cache_meta["instructions"])
        self.stats: dict[str, dict[str, np.ndarray]] = stats_from_json(cache_meta["stats"])
        self.has_image = cache_has_images(cache_meta)
        self.spec = EnvSpec.from_dict(env["spec"])
        self.discrete = self.spec.action_type == "discrete"
        if normalize_action and self.discrete:
            raise ValueError("normalize_action: only continuous actions can be normalised")
        self.split = split
        self.history = int(history)
        self.anchor_first = bool(anchor_first)
        self.chunk = int(chunk)
        self.normalize = bool(normalize)
        self.normalize_action = bool(normalize_action)
        self.transform = transform

        arrays = load_cache_arrays(self.cache_dir, mmap=True)
        self._ep_start = np.asarray(arrays["episode_start"], dtype=np.int64)  # (E,)
        self._ep_len = np.asarray(arrays["episode_length"], dtype=np.int64)
        self._ep_task = np.asarray(arrays["episode_task"], dtype=np.int64)
        self._ep_instr = np.asarray(arrays["episode_instruction"], dtype=np.int64)
        self._ep_seed = np.asarray(arrays["episode_seed"], dtype=np.int64)
        self.image_shape: tuple[int, ...] | None = cache_image_shape(self.cache_dir, cache_meta)
        if self.spec.image_shape != self.image_shape:  # e.g. a user's RGB BabyAI dataset
            self.spec = dataclasses.replace(self.spec, image_shape=self.image_shape)
        del arrays
        self.episodes = split_episodes(len(self._ep_len), split, val_fraction, split_seed)  # dataset episode ids
        lengths = self._ep_len[self.episodes]
        # global step index of every step of the split, and its episode
        self._step_episode = np.repeat(self.episodes, lengths)  # (N,)
        offsets = np.arange(len(self._step_episode), dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        self._steps = self._ep_start[self._step_episode] + offsets  # (N,)
        self._hist = np.arange(-self.history + 1, 1, dtype=np.int64)  # (T,)
        self._fut = np.arange(self.chunk, dtype=np.int64)  # (K,)
        st = self.stats["state"]
        self._state_mean, self._state_std = st["mean"], safe_std(st["std"])
        at = self.stats["action"]
        self._action_mean, self._action_std = at["mean"], safe_std(at["std"])
        self._arrays: dict[str, np.ndarray] | None = None
        self._image_ram_budget = image_ram_budget
        self._images: Any = None  # frames indexable by global step (memory map, decoded array or compressed)
        if self.has_image:
            try:
                self._images = open_cache_images(self.cache_dir, cache_meta, self._steps, image_ram_budget)
            except CorruptFramesError as exc:  # found while decoding into RAM: rebuild from the Minari data
                import warnings

                warnings.warn(f"{exc}; rebuilding the training cache", stacklevel=2)
                cache_meta = rebuild_cache(src)
                self._images = open_cache_images(self.cache_dir, cache_meta, self._steps, image_ram_budget)

    # ---------------------------------------------------------------------------------------- basics
    @property
    def num_episodes(self) -> int:
        return int(len(self.episodes))

    def __len__(self) -> int:
        return int(len(self._steps))

    @property
    def step_ids(self) -> np.ndarray:
        """(N,) the cache-wide step index of each of this split's samples (sample i is cache step ``step_ids[i]``):
        how per-step arrays of the whole dataset (e.g. replayed labels) line up with the split."""
        return self._steps

    @property
    def step_tasks(self) -> np.ndarray:
        """(N,) the task index (into :attr:`tasks`) of each of this split's samples."""
        return self._ep_task[self._step_episode]

    @property
    def episode_starts(self) -> np.ndarray:
        """(E,) the cache-wide step index where each of the dataset's episodes (both splits) starts."""
        return self._ep_start

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_arrays"] = None  # memory maps are reopened lazily in each worker
        # a pickled copy (a spawned worker) inflates its frames per batch instead of copying the decoded ones
        state["_images"] = None
        state["_image_ram_budget"] = 0
        return state

    def _data(self) -> dict[str, Any]:
        if self._arrays is None:
            self._arrays = load_cache_arrays(self.cache_dir, mmap=True)
        if self.has_image and self._images is None:
            meta = read_json(self.cache_dir / CACHE_META)
            self._images = open_cache_images(self.cache_dir, meta, self._steps, self._image_ram_budget)
        if self.has_image:
            self._arrays["image"] = self._images
        return self._arrays

    def episode_steps(self, episode: int) -> np.ndarray:
        """Indices (into this dataset) of the steps of dataset episode ``episode``, in order."""
        return np.flatnonzero(self._step_episode == episode)

    def denormalize_action(self, action: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        """Undo ``normalize_action`` (identity when it is off)."""
        if not self.normalize_action:
            return action
        if isinstance(action, torch.Tensor):
            return action * torch.as_tensor(self._action_std, device=action.device) + torch.as_tensor(self._action_mean, device=action.device)
        return action * self._action_std + self._action_mean

    # ------------------------------------------------------------------------------------- gathering
    def _check_indices(self, indices: Sequence[int] | np.ndarray | torch.Tensor, n: int | None = None,
                       what: str = "index out of range for a dataset of {n} steps") -> np.ndarray:
        """Indices as int64, negative ones counted from the end; IndexError outside [-n, n) (n: the step count)."""
        idx = np.asarray(indices.tolist() if isinstance(indices, torch.Tensor) else indices, dtype=np.int64).reshape(-1)
        n = len(self._steps) if n is None else n
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(what.format(n=n))
        return np.where(idx < 0, idx + n, idx)

    def _gather(self, idx: np.ndarray, history: int, chunk: int) -> dict[str, Any]:
        """Vectorised batch for dataset indices ``idx`` (B,)."""
        data = self._data()
        g = self._steps[idx]  # (B,) global step
        ep = self._step_episode[idx]  # (B,)
        start = self._ep_start[ep]
        end = start + self._ep_len[ep]
        B = len(idx)
        hist = self._hist if history == self.history else np.arange(-history + 1, 1, dtype=np.int64)
        if self.anchor_first and history >= 2:  # slot 0: the episode's first frame, then the latest T-1 frames
            h = np.concatenate([start[:, None], g[:, None] + hist[None, 1:]], axis=1)  # (B, T)
        else:
            h = g[:, None] + hist  # (B, T)
        obs_mask = h >= start[:, None]
        h = np.maximum(h, start[:, None])
        flat_h = h.reshape(-1)
        state = data["state"][flat_h].reshape(B, history, -1)  # (B, T, S)
        if self.normalize:
            state = (state - self._state_mean) / self._state_std
        state = np.where(obs_mask[..., None], state, 0.0).astype(np.float32)
        arrays: dict[str, np.ndarray] = {}
        if self.has_image:
            image = data["image"][flat_h].reshape(B, history, *self.image_shape)  # (B, T, H, W, C)
            if not obs_mask.all():
                image[~obs_mask] = 0
            arrays["image"] = image
        arrays["state"] = state
        arrays["obs_mask"] = obs_mask
        instr = self._ep_instr[ep]
        arrays["instruction_id"] = instr
        arrays["task_id"] = self._ep_task[ep]
        if chunk > 0:
            fut = self._fut if chunk == self.chunk else np.arange(chunk, dtype=np.int64)
            c = g[:, None] + fut  # (B, K)
            action_mask = c < end[:, None]
            c = np.minimum(c, (end - 1)[:, None])
            action = data["action"][c.reshape(-1)]
            if self.discrete:
                action = np.where(action_mask, action.reshape(B, chunk), 0).astype(np.int64)  # (B, K)
            else:
                action = action.reshape(B, chunk, -1)  # (B, K, A)
                if self.normalize_action:
                    action = (action - self._action_mean) / self._action_std
                action = np.where(action_mask[..., None], action, 0.0).astype(np.float32)
            arrays["action"] = action
            arrays["action_mask"] = action_mask
        arrays["episode"] = ep
        arrays["step"] = g - start
        arrays["steps_left"] = end - 1 - g  # 0 on an episode's last step
        arrays["image_present"] = np.full(B, self.has_image)
        arrays["instruction_present"] = np.ones(B, dtype=bool)
        arrays["state_present"] = np.ones(B, dtype=bool)
        batch = _to_tensors(arrays)
        batch["instruction"] = [self.instructions[i] for i in instr.tolist()]
        return batch

    def _apply_transform(self, batch: dict[str, Any]) -> dict[str, Any]:
        if self.transform is None:
            return batch
        if getattr(self.transform, "batched", False):
            return self.transform(batch)
        n = len(batch["instruction"])
        return collate([self.transform(unbatch(batch, j)) for j in range(n)])

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        """An already-collated batch for ``indices`` (what DataLoader calls when it exists)."""
        return self._apply_transform(self._gather(self._check_indices(indices), self.history, self.chunk))

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = unbatch(self._gather(self._check_indices([index]), self.history, self.chunk), 0)
        return self.transform(item) if self.transform is not None else item

    def __repr__(self) -> str:
        return (
            f"DemoDataset({self.env_name!r}, split={self.split!r}, episodes={self.num_episodes}, steps={len(self)}, "
            f"history={self.history}, chunk={self.chunk}, normalize={self.normalize})"
        )


class PairDataset(Dataset):
    """(observation, instruction) pairs for contrastive alignment: one pair per step of ``ds``.

    Items: ``image`` (H, W, C) [if any], ``state`` (S,), ``instruction`` str, ``instruction_id``, ``task_id``,
    ``episode``, ``step``, ``steps_left`` (0 on an episode's last step) and the ``*_present`` flags. Steps of one
    episode share an instruction; use ``instruction_id`` to avoid treating them as negatives.
    """

    def __init__(self, ds: DemoDataset, transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        if not isinstance(ds, DemoDataset):
            raise ValueError(f"ds: expected a DemoDataset, got {type(ds).__name__}")
        self.ds = ds
        self.transform = transform
        self.instructions = ds.instructions

    def __len__(self) -> int:
        return len(self.ds)

    def _pairs(self, indices: Sequence[int]) -> dict[str, Any]:
        batch = self.ds._gather(self.ds._check_indices(indices), history=1, chunk=0)
        if "image" in batch:
            batch["image"] = batch["image"][:, 0]  # (B, H, W, C)
        batch["state"] = batch["state"][:, 0]  # (B, S)
        del batch["obs_mask"]
        return batch

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        batch = self._pairs(indices)
        if self.transform is None:
            return batch
        if getattr(self.transform, "batched", False):
            return self.transform(batch)
        return collate([self.transform(unbatch(batch, j)) for j in range(len(batch["instruction"]))])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = unbatch(self._pairs([index]), 0)
        return self.transform(item) if self.transform is not None else item


class EpisodeDataset(DemoDataset):
    """Whole demonstration episodes, for policies with a recurrent memory (``model.memory``).

    ``len(ds)`` is the number of episodes in the split and ``ds.__getitems__(ids)`` a batch of B episodes, right-padded
    to the longest one (L steps): ``image`` (B, L, H, W, C) [if any], ``state`` (B, L, S), ``seq_mask`` (B, L) True on
    real steps (``obs_mask`` is the same), ``action`` (B, L, K[, A]) the ``chunk`` actions from every step with
    ``action_mask`` (B, L, K), ``step`` and ``steps_left`` (B, L); per episode ``instruction`` (list of B),
    ``instruction_id``, ``task_id``, ``episode`` and the ``*_present`` flags (B,). Padded steps are zeros. Every
    step of every episode is seen once per pass, with the whole episode before it as context, as a memory sees it
    when it acts.

    Same arguments as :class:`DemoDataset` except ``history`` (always 1: the memory carries the past),
    ``anchor_first`` and ``transform``.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", val_fraction: float = 0.1,
                 split_seed: int = 0, chunk: int = 1, normalize: bool = False, normalize_action: bool = False,
                 env_name: str | None = None, cache_dir: str | os.PathLike[str] | None = None,
                 image_ram_budget: int | None = None) -> None:
        super().__init__(root, split=split, val_fraction=val_fraction, split_seed=split_seed, history=1, chunk=chunk,
                         normalize=normalize, normalize_action=normalize_action, env_name=env_name,
                         cache_dir=cache_dir, image_ram_budget=image_ram_budget)
        lengths = self._ep_len[self.episodes]
        self._split_len = lengths  # (E_split,)
        self._split_first = np.cumsum(lengths) - lengths  # (E_split,) first dataset step index of each episode

    @property
    def num_steps(self) -> int:
        return int(len(self._steps))

    def __len__(self) -> int:
        return self.num_episodes

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        ids = self._check_indices(indices, self.num_episodes, "episode index out of range for a split of {n} episodes")
        lengths = self._split_len[ids]  # (B,)
        b, l_max = len(ids), int(lengths.max()) if len(ids) else 0
        starts = np.cumsum(lengths) - lengths  # (B,) row of each episode's first step in the flat batch
        rows = np.repeat(np.arange(b), lengths)  # (N,) episode row of every step
        pos = np.arange(len(rows)) - np.repeat(starts, lengths)  # (N,) position in episode
        flat = self._gather(self._split_first[ids][rows] + pos, 1, self.chunk)  # per-step batch, N rows
        firsts = torch.as_tensor(starts)
        r, p = torch.as_tensor(rows), torch.as_tensor(pos)
        out: dict[str, Any] = {}
        for key, v in flat.items():
            if key in ("instruction_id", "task_id", "episode") or key.endswith("_present"):
                out[key] = v[firsts]  # (B,) per episode
            elif key == "instruction":
                out[key] = [v[i] for i in firsts.tolist()]
            else:
                if key in ("image", "state", "obs_mask"):
                    v = v[:, 0]  # drop the history axis (T = 1)
                padded = torch.zeros((b, l_max, *v.shape[1:]), dtype=v.dtype)
                padded[r, p] = v
                out[key] = padded
        out["seq_mask"] = out["obs_mask"]
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        return unbatch(self.__getitems__([index]), 0)

    def __repr__(self) -> str:
        return (f"EpisodeDataset({self.env_name!r}, split={self.split!r}, episodes={self.num_episodes}, "
                f"steps={self.num_steps}, chunk={self.chunk}, normalize={self.normalize})")


def make_dataset(root: str | os.PathLike[str], split: str = "train", *, sequence: bool = False, history: int = 1,
                 anchor_first: bool = False, chunk: int = 1, **kwargs: Any) -> DemoDataset:
    """The dataset a policy trains on: :class:`EpisodeDataset` for a recurrent memory (``sequence``), else
    :class:`DemoDataset` with ``history`` frames per step. Takes ``PolicyConfig.dataset_view()`` as keywords."""
    if sequence:
        if history != 1 or anchor_first:
            raise ValueError(f"sequence: whole episodes need history == 1 and no anchor_first (the memory carries "
                             f"the past), got history={history}, anchor_first={anchor_first}")
        return EpisodeDataset(root, split=split, chunk=chunk, **kwargs)
    return DemoDataset(root, split=split, history=history, anchor_first=anchor_first, chunk=chunk, **kwargs)
