"""Held-out compositions for dataset generation: BabyAI "colour object" pairs no mission of a dataset may name
(``generate_dataset(hold_out_pairs=...)``, ``--hold-out-pairs``), kept out of the missions only (scope ``mission``,
the default: the objects still appear as distractors) or out of the episodes altogether (``scene``: no level holds
one either; ``--hold-out-scope scene``), how a mission's and a level's pairs are found, and the failure reason a
skipped seed is recorded under. Importable from :mod:`vlafoundry.data.generate` as before.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from vlafoundry.envs.babyai_missions import BABYAI_COLORS

HOLD_OUT_OBJECTS: tuple[str, ...] = ("box", "ball", "key", "door")
_PAIR = re.compile(r"\b(" + "|".join(BABYAI_COLORS) + r") (" + "|".join(HOLD_OUT_OBJECTS) + r")\b")
HELD_OUT_REASON = "held out pair: "  # failure reason prefix of a seed skipped because its mission names one
IN_LEVEL = " (in the level, not the mission)"  # suffix of that reason when only the level holds it ("scene")
# what a held-out pair is kept out of: "mission", the instructions only (the objects still appear, as
# distractors); "scene", the episode altogether (no mission names one and no level holds one)
HOLD_OUT_SCOPES: tuple[str, ...] = ("mission", "scene")


def check_hold_out_scope(scope: str) -> str:
    """``scope`` if it is one of :data:`HOLD_OUT_SCOPES`, else ``ValueError`` naming expected vs got."""
    if scope not in HOLD_OUT_SCOPES:
        raise ValueError(f"hold_out_scope: expected one of {list(HOLD_OUT_SCOPES)}, got {scope!r}")
    return scope


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


def scene_pairs(level: Any) -> list[str]:
    """The ``"colour object"`` pairs of the objects a reset Minigrid level holds (``level``: the unwrapped env;
    its grid's objects and the carried one, walls and floors left out), in grid order."""
    objects = [*getattr(level.grid, "grid", []), getattr(level, "carrying", None)]
    return [f"{o.color} {o.type}" for o in objects if o is not None and o.type in HOLD_OUT_OBJECTS]


def held_out_reason(instruction: str, level: Any, pairs: Sequence[str], scope: str = "mission") -> str | None:
    """Why a seed must be skipped to hold ``pairs`` out under ``scope`` (its failure reason), or None: the mission
    names one (both scopes), or the level holds one (``"scene"``; ``level`` is the unwrapped env after reset)."""
    pair = held_out_in(instruction, pairs)
    if pair is not None:
        return HELD_OUT_REASON + pair
    if check_hold_out_scope(scope) == "scene":
        pair = next((p for p in scene_pairs(level) if p in pairs), None)
        if pair is not None:
            return HELD_OUT_REASON + pair + IN_LEVEL
    return None
