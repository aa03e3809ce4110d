"""Training-batch augmentations an env family offers (:meth:`EnvFamily.augmentation`).

:class:`ColourPermutation` is BabyAI's (``data.augment colour``; built by
:func:`vlafoundry.envs.babyai.colour_permutation`). It lives in ``envs`` because ``envs`` must not import ``data``;
``vlafoundry.data`` re-exports it and :func:`stable_text_id`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any

import torch


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
