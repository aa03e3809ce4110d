"""Held-out compositions for dataset generation: BabyAI "colour object" pairs no mission of a dataset may name
(``generate_dataset(hold_out_pairs=...)``, ``--hold-out-pairs``), how a mission's pairs are found, and the failure
reason a seed skipped for naming one is recorded under. Importable from :mod:`vlafoundry.data.generate` as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from vlafoundry.envs.babyai_missions import BABYAI_COLORS

HOLD_OUT_OBJECTS: tuple[str, ...] = ("box", "ball", "key", "door")
_PAIR = re.compile(r"\b(" + "|".join(BABYAI_COLORS) + r") (" + "|".join(HOLD_OUT_OBJECTS) + r")\b")
HELD_OUT_REASON = "held out pair: "  # failure reason prefix of a seed skipped because its mission names one


def parse_hold_out_pairs(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"red ball,green key"`` (or a list of such strings) -> ``("green key", "red ball")``: sorted, unique,
    each a BabyAI colour and object type; anything else raises ``ValueError`` naming expected vs got."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    pairs: set[str] = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(  # noqa: TRY004 (config errors are ValueErrors, reported as ConfigError)
                f"hold_out_pairs: expected 'colour object' strings, got {type(item).__name__} {item!r}")
        words = item.lower().split()
        if not words:
            continue
        if (len(words) != 2 or words[0] not in BABYAI_COLORS or words[1] not in HOLD_OUT_OBJECTS):
            raise ValueError(f"hold_out_pairs: expected 'colour object' with colour in {list(BABYAI_COLORS)} and "
                             f"object in {list(HOLD_OUT_OBJECTS)}, got {item.strip()!r}")
        pairs.add(" ".join(words))
    return tuple(sorted(pairs))


def mission_pairs(instruction: str) -> list[str]:
    """The ``"colour object"`` pairs a BabyAI mission names (descriptions without a colour name none)."""
    return [f"{m.group(1)} {m.group(2)}" for m in _PAIR.finditer(" ".join(str(instruction).lower().split()))]


def held_out_in(instruction: str, pairs: Sequence[str]) -> str | None:
    """The first held-out pair ``instruction`` names, or None."""
    return next((p for p in mission_pairs(instruction) if p in pairs), None)
