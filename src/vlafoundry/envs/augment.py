"""Training-batch augmentations an env family offers (:meth:`EnvFamily.augmentation`).

:class:`ColourPermutation` is BabyAI's (``data.augment colour``; built by
:func:`vlafoundry.envs.babyai.colour_permutation`). It lives in ``envs`` because ``envs`` must not import ``data``;
``vlafoundry.data`` re-exports it and :func:`stable_text_id`.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Mapping, Sequence
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
        hold_out_pairs: ``"colour object"`` pairs no training instruction may name (held-out compositions,
            ``data.hold_out_pairs``). With pairs, a row draws uniformly among the *allowed* permutations of its
            instruction: those that map no ``colour object`` the instruction names onto a held-out pair (a row
            reading "go to the blue ball" with "red ball" held out may map blue to any colour but red). The
            identity is allowed for every instruction that names no held-out pair, so no row is ever dropped; a
            row whose only allowed permutation is the identity keeps its colours. Without pairs, every row draws
            among all ``K!`` permutations.
        object_names: object-type id -> name (``{6: "ball", ...}``). Given with pairs, a row's permutation must
            also keep the held-out objects of its frames what they are: a visible object of a held-out pair stays
            one (``red ball`` -> a held-out colour of balls), any other visible object does not become one. Without
            it, an episode whose target is a blue ball, drawn "anything but red", may turn a distractor ball red:
            held-out objects would appear where the data has none, always as distractors.
        max_colours_with_pairs: the most colours for which the allowed sets are enumerated (``K!`` permutations).
    """

    def __init__(self, colour_names: Sequence[str], recolour_types: Sequence[int], type_channel: int = 0,
                 colour_channel: int = 1, hold_out_pairs: Sequence[str] = (),
                 object_names: Mapping[int, str] | None = None, max_colours_with_pairs: int = 8) -> None:
        names = [str(c) for c in colour_names]
        if len(names) < 2 or len(set(names)) != len(names):
            raise ValueError(f"colour_names: expected >= 2 distinct names, got {names}")
        if not recolour_types:
            raise ValueError("recolour_types: expected at least one object type id")
        self.colour_names = names
        self.recolour_types = torch.as_tensor(sorted({int(t) for t in recolour_types}), dtype=torch.long)
        self.type_channel, self.colour_channel = int(type_channel), int(colour_channel)
        self._word = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r")\b")
        self._index = {n: i for i, n in enumerate(names)}
        self.hold_out_pairs = self._parse_pairs(hold_out_pairs)
        self.object_names = {int(k): str(v) for k, v in (object_names or {}).items()}
        self._allowed: dict[str, torch.Tensor] = {}  # instruction -> indices into self._perms
        self._perms: torch.Tensor | None = None  # (K!, K) every permutation, identity first
        if self.hold_out_pairs:
            if len(names) > max_colours_with_pairs:
                raise ValueError(f"hold_out_pairs: the allowed permutations are enumerated for at most "
                                 f"{max_colours_with_pairs} colours, got {len(names)}")
            objects = sorted({o for _, o in self.hold_out_pairs})
            self._pair_re = re.compile(r"\b(" + "|".join(re.escape(n) for n in names) + r") ("
                                       + "|".join(re.escape(o) for o in objects) + r")\b")  # fmt: skip
            self._perms = torch.tensor(list(itertools.permutations(range(len(names)))), dtype=torch.long)

    def _parse_pairs(self, pairs: Sequence[str]) -> tuple[tuple[str, str], ...]:
        out: set[tuple[str, str]] = set()
        for item in pairs:
            words = str(item).lower().split()
            if len(words) != 2 or words[0] not in self._index:
                raise ValueError(f"hold_out_pairs: expected 'colour object' with colour in {self.colour_names}, "
                                 f"got {item!r}")
            out.add((words[0], words[1]))
        return tuple(sorted(out))

    def named_pairs(self, text: str) -> list[tuple[str, str]]:
        """The ``(colour, object)`` pairs ``text`` names, for the objects of the held-out pairs (lower-cased)."""
        if not self.hold_out_pairs:
            return []
        return [(m.group(1), m.group(2)) for m in self._pair_re.finditer(" ".join(text.lower().split()))]

    def allowed_permutations(self, text: str, visible: Sequence[tuple[int, int]] = ()) -> torch.Tensor:
        """(N, K) the permutations that keep ``text`` clear of every held-out pair and keep each visible
        ``(type id, colour id)`` object a held-out one iff it was one (``perm[c]`` is the new colour id of colour
        ``c``); all ``K!`` without held-out pairs; the identity alone when none is allowed."""
        if self._perms is None:
            self._perms = torch.tensor(list(itertools.permutations(range(len(self.colour_names)))),
                                       dtype=torch.long)  # fmt: skip
        return self._perms[self._allowed_indices(text, visible)]

    def _held_colours(self, obj: str) -> list[int]:
        return [self._index[c] for c, o in self.hold_out_pairs if o == obj]

    def _allowed_indices(self, text: str, visible: Sequence[tuple[int, int]] = ()) -> torch.Tensor:
        seen = frozenset((self.object_names[t], c) for t, c in visible if self.object_names.get(t) is not None)
        key = (text, seen)
        if key in self._allowed:
            return self._allowed[key]
        assert self._perms is not None
        ok = torch.ones(self._perms.shape[0], dtype=torch.bool)
        for colour, obj in self.named_pairs(text):
            banned = self._held_colours(obj)
            if banned:
                ok &= ~torch.isin(self._perms[:, self._index[colour]], torch.tensor(banned))
        for obj, colour in seen:
            held = self._held_colours(obj)
            if held and colour < len(self.colour_names):
                to_held = torch.isin(self._perms[:, colour], torch.tensor(held))
                ok &= to_held if colour in held else ~to_held
        idx = ok.nonzero().flatten()
        if idx.numel() == 0:
            idx = torch.zeros(1, dtype=torch.long)  # the identity (first of itertools.permutations): kept as is
        if len(self._allowed) < 100_000:  # distinct (instruction, visible held-out objects) of a dataset
            self._allowed[key] = idx
        return idx

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
        if self.hold_out_pairs:
            perm = self._draw_allowed(instructions, image, generator)  # (B, K)
        else:
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

    def _draw_allowed(self, instructions: Sequence[str], image: torch.Tensor,
                      generator: torch.Generator | None) -> torch.Tensor:  # fmt: skip
        """(B, K) one permutation per row, uniform among the row's allowed ones (its instruction and the objects
        of all its frames)."""
        assert self._perms is not None
        u = torch.rand(len(instructions), generator=generator)  # (B,)
        b = image.shape[0]
        if self.object_names:
            kinds = image[..., self.type_channel].long().reshape(b, -1)  # (B, M)
            colours = image[..., self.colour_channel].long().reshape(b, -1)
            typed = torch.tensor(sorted(self.object_names), dtype=torch.long)
            codes = torch.where(torch.isin(kinds, typed), kinds * 256 + colours, -1)  # (B, M)
        rows = []
        for i, (text, x) in enumerate(zip(instructions, u.tolist())):
            visible: list[tuple[int, int]] = []
            if self.object_names:
                visible = [(c // 256, c % 256) for c in torch.unique(codes[i]).tolist() if c >= 0]
            idx = self._allowed_indices(str(text), visible)
            rows.append(idx[min(int(x * idx.numel()), idx.numel() - 1)])
        return self._perms[torch.stack(rows)]

    def __repr__(self) -> str:
        held = f", hold_out_pairs={[' '.join(p) for p in self.hold_out_pairs]}" if self.hold_out_pairs else ""
        return (f"ColourPermutation(colours={self.colour_names}, recolour_types={self.recolour_types.tolist()}"
                f"{held})")
