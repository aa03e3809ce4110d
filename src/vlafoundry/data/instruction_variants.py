"""Instruction variants: train on several phrasings of each demonstration's instruction.

A dataset names each task with a handful of fixed phrasings (Meta-World: three per task). A policy trained on them
learns those few points of its language encoder's space; a frozen sentence encoder (MiniLM) places a phrasing it
was never trained on *near* them, but the policy's projection was fitted to three points per task only. With
``data.instruction_variants`` the trainer replaces, per training row and with probability
``data.instruction_variant_p``, the row's instruction by one of its variants, drawn uniformly, so the policy learns
a region of sentence space per task. The demonstration (frames, state, actions) and ``instruction_id`` stay as
recorded: a variant means what its instruction meant.

Variant files use the paraphrase-file format (:mod:`vlafoundry.data.paraphrase`: exact instructions and
``{color} {object}`` templates). Shipped files (``src/vlafoundry/data/instruction_variants/*.json``) are named by
their stem: ``metaworld`` (the 50 Meta-World tasks' phrasings), ``babyai`` (the local levels' missions). They are
written apart from the evaluation paraphrase files (tests/data/test_instruction_variants_files.py checks that no
variant is an evaluation phrasing), so a policy trained with them is still measured on phrasings it never read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlafoundry.data.paraphrase import ParaphraseMap, load_paraphrases

VARIANTS_DIR = Path(__file__).with_name("instruction_variants")


def shipped_variant_files() -> list[str]:
    """The names of the shipped variant files (``metaworld``, ``babyai``, ...)."""
    return sorted(p.stem for p in VARIANTS_DIR.glob("*.json"))


def resolve_variants(value: str) -> Path:
    """A shipped variant file's name or a path to a JSON file -> its path; ``FileNotFoundError`` naming both
    the shipped names and the path when it is neither."""
    if value in shipped_variant_files():
        return VARIANTS_DIR / f"{value}.json"
    path = Path(value).expanduser()
    if path.is_file():
        return path
    raise FileNotFoundError(f"data.instruction_variants: expected a shipped name {shipped_variant_files()} or a "
                            f"paraphrase-format JSON file, got {value!r} (no such file)")


class InstructionVariants:
    """Rewrite a training batch's instructions: each row, with probability ``p``, gets a uniformly drawn variant of
    its instruction (rows whose instruction the map does not cover keep it).

    Args:
        variants: the variant map (:func:`load_variants` reads one from a file or shipped name).
        p: probability in [0, 1] that a covered row is rewritten.
    """

    def __init__(self, variants: ParaphraseMap, p: float = 0.5) -> None:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"instruction_variant_p: expected a probability in [0, 1], got {p!r}")
        self.variants = variants
        self.p = float(p)
        self._counts: dict[str, int] = {}  # instruction -> number of variants (0: not covered)
        self._rewrites: dict[tuple[str, int], str] = {}  # (instruction, choice) -> variant

    def _count(self, instruction: str) -> int:
        n = self._counts.get(instruction)
        if n is None:
            found = self.variants.alternatives(instruction)
            n = self._counts[instruction] = 0 if found is None else len(found[0])
        return n

    def expand(self, instructions: Any) -> list[str]:
        """Every variant of each distinct instruction of ``instructions``, first-seen order, without repeats."""
        out: dict[str, None] = {}
        for text in dict.fromkeys(str(t) for t in instructions):
            for i in range(self._count(text)):
                out.setdefault(self.variants.rewrite(text, i) or text, None)
        return list(out)

    def __call__(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        """A new batch dict (the input is not modified) whose ``instruction`` (B strings) is rewritten; the other
        keys (``instruction_id`` included) as they were."""
        instructions = [str(s) for s in batch["instruction"]]
        b = len(instructions)
        if b == 0 or self.p == 0.0:
            return dict(batch)
        rewrite = torch.rand(b, generator=generator) < self.p  # (B,)
        pick = torch.rand(b, generator=generator)  # (B,) which variant, uniform over the row's count
        out = dict(batch)
        new = []
        for text, yes, u in zip(instructions, rewrite.tolist(), pick.tolist()):
            n = self._count(text)
            if not (yes and n):
                new.append(text)
                continue
            key = (text, min(int(u * n), n - 1))
            if key not in self._rewrites:
                self._rewrites[key] = self.variants.rewrite(*key) or text
            new.append(self._rewrites[key])
        out["instruction"] = new
        return out

    def __repr__(self) -> str:
        return f"InstructionVariants({len(self.variants)} keys, p={self.p:g})"


class WithVariantTexts:
    """A read-only view of a dataset whose ``instructions`` also lists their variants, for what a policy builds from
    its training data's texts (a scratch tokenizer's vocabulary, the instructions recorded in its spec): a variant's
    words are then known words, not ``[UNK]``. Everything else is the dataset's."""

    def __init__(self, dataset: Any, variants: InstructionVariants) -> None:
        self._dataset = dataset
        originals = [str(t) for t in dataset.instructions]
        self.instructions = list(dict.fromkeys([*originals, *variants.expand(originals)]))

    def __len__(self) -> int:
        return len(self._dataset)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)


def load_variants(value: str, p: float = 0.5) -> InstructionVariants:
    """:class:`InstructionVariants` from a shipped name or a file (``ValueError`` naming the file and key for a
    malformed one, ``FileNotFoundError`` for a missing one)."""
    return InstructionVariants(load_paraphrases(resolve_variants(value)), p)
