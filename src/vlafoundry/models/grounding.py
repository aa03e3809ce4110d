"""Grounding a new phrasing in the instructions a policy was trained on (``model.instruction_snap``).

A frozen sentence encoder (MiniLM) places "could you open the drawer" near "open the drawer", but the policy's
trainable layers only ever saw the training data's few phrasings, so a new phrasing's features are out of their
distribution. :class:`InstructionSnap` replaces an instruction that is not a training instruction by the training
instruction with the highest cosine similarity of their sentence embeddings (the encoder's mean-pooled hidden
states), and remembers what it did, so callers can report it. Exact training instructions pass unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["InstructionSnap", "Snap"]


@dataclass(frozen=True)
class Snap:
    """One instruction as given, the training instruction it was replaced by, and their cosine similarity."""

    given: str
    used: str
    similarity: float


class InstructionSnap:
    """Nearest-training-instruction lookup for a frozen ``LanguageEncoder`` (anything with ``sentence_embeddings``).

    ``known``: the distinct training instructions (``PolicySpec.instructions``). Their embeddings are computed on
    first use. ``__call__(texts)`` returns the texts to encode; ``last`` holds a :class:`Snap` per replaced text."""

    def __init__(self, known: Sequence[str], encoder: Any) -> None:
        self.known = list(dict.fromkeys(str(t) for t in known))
        if not self.known:
            raise ValueError("model.instruction_snap: expected the training instructions in the policy spec "
                             "(spec.instructions), got none (a checkpoint trained before they were recorded)")
        self._known_set = set(self.known)
        self.encoder = encoder
        self._table: torch.Tensor | None = None  # (N, H) unit vectors
        self.last: list[Snap] = []

    def table(self) -> torch.Tensor:
        if self._table is None:
            rows = [self.encoder.sentence_embeddings(self.known[i:i + 256]) for i in range(0, len(self.known), 256)]
            self._table = torch.cat(rows).cpu()  # (N, H)
        return self._table

    def nearest(self, texts: Sequence[str]) -> list[Snap]:
        """The training instruction nearest to each text (itself when it is one)."""
        out: list[Snap | None] = [Snap(t, t, 1.0) if t in self._known_set else None for t in texts]
        new = list(dict.fromkeys(t for t, s in zip(texts, out) if s is None))
        if new:
            sims = self.encoder.sentence_embeddings(new).cpu() @ self.table().T  # (M, N)
            best, idx = sims.max(dim=1)
            found = {t: Snap(t, self.known[int(i)], float(b)) for t, b, i in zip(new, best, idx)}
            out = [s if s is not None else found[t] for t, s in zip(texts, out)]
        return out  # type: ignore[return-value]

    def __call__(self, texts: Sequence[str]) -> list[str]:
        snaps = self.nearest(list(texts))
        self.last = [s for s in snaps if s.used != s.given]
        return [s.used for s in snaps]
