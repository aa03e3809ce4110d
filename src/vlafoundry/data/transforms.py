"""Sample transforms for demonstration data.

``ColourPermutation`` and ``stable_text_id`` live in :mod:`vlafoundry.envs.augment` (an env family's augmentation;
``envs`` sits below ``data`` and cannot import it) and are re-exported here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vlafoundry.envs.augment import ColourPermutation, stable_text_id

__all__ = ["ColourPermutation", "ModalityDropout", "stable_text_id"]


class ModalityDropout:
    """Drop whole modalities at random, per sample: ``<mod>_present`` becomes False and the data is zeroed
    (images and states set to 0, the instruction to ``""``; ``instruction_id`` is kept as a label).

    Works on one sample (``<mod>_present`` a 0-d bool tensor) or on a batch (shape ``(B,)``), so
    ``DemoDataset.__getitems__`` applies it vectorised. Modalities the sample does not have are skipped.

    Args:
        image / instruction / state: drop probability of each modality, in [0, 1].
        seed: seed of the random stream; each DataLoader worker mixes in its worker id.
    """

    batched = True

    def __init__(self, image: float = 0.0, instruction: float = 0.0, state: float = 0.0, seed: int | None = None) -> None:
        self.p = {"image": float(image), "instruction": float(instruction), "state": float(state)}
        for name, p in self.p.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {p}")
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_pid: int | None = None

    def _generator(self) -> np.random.Generator:
        import os

        pid = os.getpid()
        if self._rng is None or self._rng_pid != pid:
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else -1
            entropy = [self.seed, worker + 1] if self.seed is not None else None
            self._rng = np.random.default_rng(entropy)
            self._rng_pid = pid
        return self._rng

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_rng"] = None
        state["_rng_pid"] = None
        return state

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        rng = self._generator()
        sample = dict(sample)
        for mod, p in self.p.items():
            flag = f"{mod}_present"
            if p <= 0.0 or mod not in sample or flag not in sample:
                continue
            present = torch.as_tensor(sample[flag], dtype=torch.bool)
            batched = present.ndim == 1
            n = present.shape[0] if batched else 1
            drop = torch.from_numpy(rng.random(n) < p)  # (B,)
            if not batched:
                drop = drop[0]
            sample[flag] = present & ~drop
            if mod == "instruction":
                if batched:
                    sample[mod] = ["" if d else s for s, d in zip(sample[mod], drop.tolist())]
                elif bool(drop):
                    sample[mod] = ""
            else:
                x = sample[mod]
                keep = (~drop).view(-1, *([1] * (x.ndim - 1))) if batched else ~drop
                sample[mod] = x * keep.to(x.dtype)
        return sample

    def __repr__(self) -> str:
        return f"ModalityDropout(image={self.p['image']}, instruction={self.p['instruction']}, state={self.p['state']}, seed={self.seed})"
