"""Deterministic, resumable, rank-aware batch order.

Every rank draws the same global permutation for an epoch (seeded by ``seed + epoch``), cuts it into global
batches of ``global_batch`` indices, and keeps its own contiguous slice of each batch. So N processes with
``global_batch`` see exactly the batches one process would see, and the order is reproduced from two
integers ``(epoch, position)`` that go into every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplerState:
    epoch: int = 0
    position: int = 0  # global batches already consumed in this epoch


class ResumableBatchSampler:
    def __init__(self, num_samples: int, global_batch: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples: expected >= 1, got {num_samples}")
        if global_batch % world_size != 0:
            raise ValueError(f"batch_size: expected a multiple of the number of processes ({world_size}), "
                             f"got {global_batch}")
        self.n = num_samples
        self.global_batch = global_batch
        self.seed = seed
        self.rank, self.world = rank, world_size
        self.drop_last = drop_last and num_samples >= global_batch
        self.state = SamplerState()
        self._perm: torch.Tensor | None = None
        self._perm_epoch = -1

    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.n // self.global_batch
        return -(-self.n // self.global_batch)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.n, generator=g)
            self._perm_epoch = epoch
        return self._perm

    def next_batch(self) -> list[int]:
        """This rank's indices of the next global batch (advances the state)."""
        if self.state.position >= self.batches_per_epoch():
            self.state = SamplerState(self.state.epoch + 1, 0)
        perm = self._permutation(self.state.epoch)
        start = self.state.position * self.global_batch
        glob = perm[start:start + self.global_batch]
        if len(glob) < self.global_batch:  # small dataset: wrap around with the head of the permutation
            glob = torch.cat([glob, perm[: self.global_batch - len(glob)]])
        per_rank = self.global_batch // self.world
        self.state.position += 1
        return glob[self.rank * per_rank:(self.rank + 1) * per_rank].tolist()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.state.epoch, "position": self.state.position, "seed": self.seed,
                "global_batch": self.global_batch, "num_samples": self.n}

    def load_state_dict(self, sd: dict[str, int]) -> None:
        if sd.get("num_samples", self.n) != self.n:
            raise ValueError(f"data order: the checkpoint was made with {sd['num_samples']} training samples, "
                             f"this dataset has {self.n}; resume needs the same dataset")
        self.state = SamplerState(int(sd["epoch"]), int(sd["position"]))
