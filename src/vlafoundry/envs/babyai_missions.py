"""BabyAI's mission grammar (``minigrid.envs.babyai.core.verifier``): object descriptions read
``(a|the) [colour] (box|ball|key|door|object) [location]``. Parsed here into subgroup labels for the bias tables
(``template``, ``object``, ``colour``, ``task``; see :mod:`vlafoundry.eval.subgroups`)."""

from __future__ import annotations

import re

BABYAI_COLORS: tuple[str, ...] = ("red", "green", "blue", "purple", "yellow", "grey")
BABYAI_OBJECTS: tuple[str, ...] = ("box", "ball", "key", "door", "object")
BABYAI_LOCATIONS: tuple[str, ...] = ("in front of you", "behind you", "on your left", "on your right")

# One BabyAI object description: article, optional colour, type, optional location.
_OBJ_DESC = re.compile(
    r"\b(?P<article>a|the) (?:(?P<color>" + "|".join(BABYAI_COLORS) + r") )?"
    r"(?P<object>" + "|".join(BABYAI_OBJECTS) + r")\b"
)


def normalize_instruction(text: str) -> str:
    """Lower-case, trim and collapse whitespace (the form used for matching and grouping)."""
    return " ".join(str(text).lower().split())


def mission_template(instruction: str) -> str:
    """The mission with colour / object slot values replaced by ``{color}`` / ``{object}``."""
    text = normalize_instruction(instruction)

    def _sub(m: re.Match[str]) -> str:
        color = " {color}" if m.group("color") else ""
        return f"{m.group('article')}{color} {{object}}"

    return _OBJ_DESC.sub(_sub, text)


def mission_subgroups(instruction: str, task: str | None = None) -> dict[str, str]:
    """Subgroup labels ``{"template", "object", "colour", "task"}`` of one mission.

    Missions outside the BabyAI grammar (e.g. Meta-World's fixed task instructions) get their normalised text as
    template and ``"none"`` as object and colour; ``task`` defaults to ``"none"`` when not given.
    """
    text = normalize_instruction(instruction)
    first = _OBJ_DESC.search(text)
    return {
        "template": mission_template(text),
        "object": first.group("object") if first else "none",
        "colour": (first.group("color") or "none") if first else "none",
        "task": task if task else "none",
    }
