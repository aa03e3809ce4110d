"""Paraphrase files: rewrite instructions (evaluation: language generalisation; training: instruction variants).

File format (JSON, UTF-8): one object mapping a *key* to a non-empty list of *alternatives*::

    {
      "go to the {color} {object}": ["walk over to the {color} {object}", "find the {object} that is {color}"],
      "go to a {object}": ["approach any {object}"],
      "reach the goal position": ["move the gripper to the target"]
    }

* A key without placeholders is an **exact instruction**; it matches when the instruction equals it after both
  are lower-cased and their whitespace collapsed.
* A key with placeholders is a **template**. Placeholders are ``{color}`` (a BabyAI colour: red, green, blue,
  purple, yellow, grey), ``{object}`` (box, ball, key, door, object), ``{article}`` (a, the) and ``{text}`` (any
  non-empty text). A name may carry a numeric suffix to tell slots apart (``{color2}``, ``{object2}``); a name used
  twice in one key must match the same value both times. Everything else in a key is literal text.
* Alternatives may use the placeholders of their key (and no others); they are filled with the matched values.
* Keys beginning with ``"#"`` are comments and ignored (their value may be anything).

Matching order: exact keys first, then templates in file order; the first template that matches the whole
instruction wins. Instructions that match no key are left unchanged (and counted as not rewritten). For an episode
with seed ``s``, alternative ``s % len(alternatives)`` is used, so a fixed seed gives a fixed rewrite.

Every problem raises ``ValueError`` naming the file and the offending key, and saying what was expected and what
was found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlafoundry.envs.babyai_missions import BABYAI_COLORS, BABYAI_OBJECTS, normalize_instruction

_PLACEHOLDER = re.compile(r"\{([a-z_]+?)(\d*)\}")
_SLOT_PATTERNS: dict[str, str] = {
    "color": "|".join(BABYAI_COLORS),
    "object": "|".join(BABYAI_OBJECTS),
    "article": "a|the",
    "text": ".+?",
}


@dataclass
class _Template:
    key: str
    pattern: re.Pattern[str]
    alternatives: list[str]


@dataclass
class ParaphraseMap:
    """A validated paraphrase mapping (see the module docstring for the file format).

    Build it with :func:`load_paraphrases` (from a file) or :meth:`from_mapping` (from a dict).
    """

    exact: dict[str, list[str]] = field(default_factory=dict)
    templates: list[_Template] = field(default_factory=list)
    source: str = "<mapping>"

    @classmethod
    def from_mapping(cls, data: Any, source: str = "<mapping>") -> ParaphraseMap:
        """Validate ``data`` (the parsed JSON) and compile it; ``source`` names it in error messages."""
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{source}: expected a JSON object mapping instructions/templates to lists of alternatives, "
                f"found {type(data).__name__}"
            )
        out = cls(source=source)
        for key, alts in data.items():
            if not isinstance(key, str) or not key.strip():
                raise ValueError(f"{source}: key {key!r}: expected a non-empty string")
            if key.lstrip().startswith("#"):
                continue
            if not isinstance(alts, list):
                raise ValueError(
                    f"{source}: key {key!r}: expected a list of alternative strings, found {type(alts).__name__}"
                )
            if not alts:
                raise ValueError(f"{source}: key {key!r}: expected a non-empty list of alternatives, found []")
            for i, alt in enumerate(alts):
                if not isinstance(alt, str):
                    raise ValueError(
                        f"{source}: key {key!r}: alternative {i}: expected a string, found {type(alt).__name__} "
                        f"({alt!r})"
                    )
                if not alt.strip():
                    raise ValueError(f"{source}: key {key!r}: alternative {i}: expected non-empty text, found {alt!r}")
            norm_key = normalize_instruction(key)
            slots = _slots_of(norm_key, source, key)
            for i, alt in enumerate(alts):
                extra = set(_slots_of(normalize_instruction(alt), source, key)) - set(slots)
                if extra:
                    raise ValueError(
                        f"{source}: key {key!r}: alternative {i} ({alt!r}) uses placeholder(s) "
                        f"{sorted('{' + s + '}' for s in extra)} that the key does not define "
                        f"(expected only {sorted('{' + s + '}' for s in set(slots))})"
                    )
            clean = [" ".join(a.split()) for a in alts]
            if not slots:
                if norm_key in out.exact:
                    raise ValueError(f"{source}: key {key!r}: duplicate of another key after normalisation")
                out.exact[norm_key] = clean
            else:
                out.templates.append(_Template(key, _compile(norm_key), clean))
        return out

    def __len__(self) -> int:
        return len(self.exact) + len(self.templates)

    def alternatives(self, instruction: str) -> tuple[list[str], dict[str, str]] | None:
        """``(alternatives, slot values)`` of the first key matching ``instruction``, or ``None``."""
        text = normalize_instruction(instruction)
        if text in self.exact:
            return self.exact[text], {}
        for tpl in self.templates:
            m = tpl.pattern.fullmatch(text)
            if m is not None:
                return tpl.alternatives, _slot_values(m)
        return None

    def rewrite(self, instruction: str, choice: int = 0) -> str | None:
        """The rewritten instruction (alternative ``choice % len``, slots filled), or ``None`` if no key matches."""
        found = self.alternatives(instruction)
        if found is None:
            return None
        alts, values = found
        alt = alts[int(choice) % len(alts)]
        return _PLACEHOLDER.sub(lambda m: values[m.group(1) + m.group(2)], alt)

    def __call__(self, instruction: str, choice: int = 0) -> str:
        """Rewrite ``instruction``, or return it unchanged if no key matches."""
        out = self.rewrite(instruction, choice)
        return instruction if out is None else out


def load_paraphrases(path: str | Path) -> ParaphraseMap:
    """Read and validate a paraphrase JSON file; errors are ``ValueError`` naming the file and key."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{p}: cannot read paraphrase file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: expected UTF-8 JSON text, found byte {exc.object[exc.start]:#04x} at offset "
                         f"{exc.start} ({exc.reason})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"{p}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg} "
            "(expected an object such as {\"go to the {color} {object}\": [\"walk to the {color} {object}\"]})"
        ) from exc
    return ParaphraseMap.from_mapping(data, source=str(p))


def _slots_of(text: str, source: str, key: str) -> list[str]:
    slots = []
    for m in _PLACEHOLDER.finditer(text):
        if m.group(1) not in _SLOT_PATTERNS:
            raise ValueError(
                f"{source}: key {key!r}: unknown placeholder {m.group(0)!r} "
                f"(expected one of {sorted('{' + s + '}' for s in _SLOT_PATTERNS)}, optionally with a number suffix)"
            )
        slots.append(m.group(1) + m.group(2))
    for brace in ("{", "}"):
        if text.count(brace) != len(slots):
            raise ValueError(f"{source}: key {key!r}: unbalanced or malformed placeholder braces in {text!r}")
    return slots


def _group_name(slot: str) -> str:
    return "s_" + slot


def _compile(norm_key: str) -> re.Pattern[str]:
    parts: list[str] = []
    seen: set[str] = set()
    pos = 0
    for m in _PLACEHOLDER.finditer(norm_key):
        parts.append(re.escape(norm_key[pos : m.start()]))
        slot = m.group(1) + m.group(2)
        if slot in seen:
            parts.append(f"(?P={_group_name(slot)})")
        else:
            seen.add(slot)
            parts.append(f"(?P<{_group_name(slot)}>{_SLOT_PATTERNS[m.group(1)]})")
        pos = m.end()
    parts.append(re.escape(norm_key[pos:]))
    return re.compile("".join(parts))


def _slot_values(m: re.Match[str]) -> dict[str, str]:
    return {name[2:]: value for name, value in m.groupdict().items()}
