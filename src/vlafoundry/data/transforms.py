"""Sample transforms for demonstration data."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch



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


def stable_text_id(text: str) -> int:
    """A non-negative 56-bit id of a string, equal in every process (Python's ``hash`` is salted per process), so
    ranks that gather pair ids for the contrastive loss agree on which instructions are the same."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=7).digest(), "little")


class ColourPermutation:
    """Relabel object colours at random, consistently in the symbolic grid and in the instruction: a batch
    augmentation for grid worlds where colour only names objects (BabyAI: "pick up the red ball" in a view with a red
    ball becomes "pick up the blue ball" in the same view with that ball, and every other red object, blue).

    Each batch row (a sample with its history frames, or a whole episode) draws one permutation of the ``K`` colours
    and applies it to every frame of the row and to the colour words of its instruction; the actions stay the
    expert's. Only cells whose object type is in ``recolour_types`` change colour (walls and floor keep theirs), so
    the relations colour carries stay true (a locked door and its key change together). ``instruction_id`` is
    recomputed from the new text (:func:`stable_text_id`), so rows whose instructions now read the same are
    positives of each other.

    Args:
        colour_names: the colour words, index i = colour id i in the grid's colour channel.
        recolour_types: object-type ids (type channel) whose colour is relabelled.
        type_channel / colour_channel: channels of the (..., H, W, C) symbolic image.
    """

    def __init__(self, colour_names: Sequence[str], recolour_types: Sequence[int], type_channel: int = 0,
                 colour_channel: int = 1) -> None:
        names = [str(c) for c in colour_names]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"colour_names: expected >= 2 distinct names, got {names}")
        if not recolour_types:
            raise ValueError("recolour_types: expected at least one object type id")
        self.colour_names = names
        self.recolour_types = torch.as_tensor(sorted(set(int(t) for t in recolour_types)), dtype=torch.long)
        self.type_channel, self.colour_channel = int(type_channel), int(colour_channel)
        self._word = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
        self._index = {n: i for i, n in enumerate(names)}

    def rewrite(self, text: str, perm: Sequence[int]) -> str:
        """The instruction with every colour word ``c`` replaced by ``colour_names[perm[c]]``."""
        return self._word.sub(lambda m: self.colour_names[perm[self._index[m.group(1)]]], text)

    def __call__(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """A new batch dict (inputs are not modified): ``image`` (B, ..., H, W, C) integer and ``instruction`` (B
        strings) relabelled; the other keys as they were."""
        image = batch.get("image")
        if image is None or not isinstance(image, torch.Tensor) or image.is_floating_point():
            raise ValueError("image: colour permutation needs the symbolic integer grid (B, ..., H, W, C); got "
                             f"{None if image is None else (type(image).__name__, getattr(image, 'dtype', None))}")
        b, k = image.shape[0], len(self.colour_names)
        instructions = list(batch["instruction"])
        if len(instructions) != b:
            raise ValueError(f"instruction: expected {b} strings (one per image row), got {len(instructions)}")
        perm = torch.argsort(torch.rand(b, k, generator=generator), dim=1)  # (B, K) a permutation per row
        kinds = image[..., self.type_channel].long()  # (B, ..., H, W)
        colours = image[..., self.colour_channel].long()
        recolour = torch.isin(kinds, self.recolour_types) & (colours < k)
        flat = colours.reshape(b, -1).clamp(max=k - 1)  # (B, M)
        new = torch.gather(perm, 1, flat).reshape(colours.shape)
        out = dict(batch)
        image = image.clone()
        image[..., self.colour_channel] = torch.where(recolour, new, colours).to(image.dtype)
        out["image"] = image
        rows = perm.tolist()
        out["instruction"] = [self.rewrite(s, p) for s, p in zip(instructions, rows)]
        if "instruction_id" in batch:
            old = torch.as_tensor(batch["instruction_id"])
            out["instruction_id"] = torch.tensor([stable_text_id(s) for s in out["instruction"]],
                                                 dtype=torch.long).reshape(old.shape)  # fmt: skip
        return out

    def __repr__(self) -> str:
        return f"ColourPermutation(colours={self.colour_names}, recolour_types={self.recolour_types.tolist()})"
