"""Sample transforms for demonstration data.

``ColourPermutation`` and ``stable_text_id`` live in :mod:`vlafoundry.envs.augment` (an env family's augmentation;
``envs`` sits below ``data`` and cannot import it) and are re-exported here.
"""

from __future__ import annotations

from typing import Any

import torch

from vlafoundry.envs.augment import ColourPermutation, stable_text_id

__all__ = ["ColourPermutation", "ModalityDropout", "stable_text_id"]


class ModalityDropout:
    """Drop whole modalities at random, per sample: ``<mod>_present`` becomes False and the data is zeroed
    (images and states set to 0, the instruction to ``""``; ``instruction_id`` is kept as a label).

    The one implementation of modality dropout: the policy processor applies it to training batches
    (``model.modality_dropout``), and it works on a single sample (``<mod>_present`` a 0-d bool) or a batch
    (shape ``(B,)``), on any device. Modalities the sample does not have are skipped.

    Args:
        image / instruction / state: drop probability of each modality, in [0, 1].
        seed: with a seed, an own ``torch.Generator`` (mixed with the DataLoader worker id); without one, torch's
            global RNG (which training checkpoints save, so a resumed run draws what the uninterrupted one drew).
    """

    batched = True

    def __init__(self, image: float = 0.0, instruction: float = 0.0, state: float = 0.0, seed: int | None = None) -> None:
        self.p = {"image": float(image), "instruction": float(instruction), "state": float(state)}
        for name, p in self.p.items():
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {p}")
        self.seed = seed
        self._gen: torch.Generator | None = None
        self._gen_pid: int | None = None

    @property
    def active(self) -> bool:
        return any(p > 0 for p in self.p.values())

    def _generator(self) -> torch.Generator | None:
        import os

        if self.seed is None:
            return None
        pid = os.getpid()
        if self._gen is None or self._gen_pid != pid:
            info = torch.utils.data.get_worker_info()
            worker = info.id if info is not None else -1
            self._gen = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + worker + 1)
            self._gen_pid = pid
        return self._gen

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_gen"] = None
        state["_gen_pid"] = None
        return state

    def __call__(self, sample: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        gen = generator if generator is not None else self._generator()
        sample = dict(sample)
        for mod, p in self.p.items():
            flag = f"{mod}_present"
            if p <= 0.0 or mod not in sample or flag not in sample:
                continue
            present = torch.as_tensor(sample[flag], dtype=torch.bool)
            batched = present.ndim == 1
            n = present.shape[0] if batched else 1
            drop = (torch.rand(n, generator=gen) < p).to(present.device)  # (B,)
            if not batched:
                drop = drop[0]
            sample[flag] = present & ~drop
            if mod == "instruction":
                if batched:
                    sample[mod] = ["" if d else s for s, d in zip(sample[mod], drop.tolist())]
                elif bool(drop):
                    sample[mod] = ""
            else:
                x = torch.as_tensor(sample[mod])
                keep = (~drop).to(x.device).view(-1, *([1] * (x.ndim - 1))) if batched else ~drop.to(x.device)
                sample[mod] = x * keep.to(x.dtype)
        return sample

    def __repr__(self) -> str:
        return f"ModalityDropout(image={self.p['image']}, instruction={self.p['instruction']}, state={self.p['state']}, seed={self.seed})"
