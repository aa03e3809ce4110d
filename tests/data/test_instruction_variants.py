"""Instruction variants (data.instruction_variants): rewriting training batches, the files, the trainer hook."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from vlafoundry.data.instruction_variants import (
    InstructionVariants,
    WithVariantTexts,
    load_variants,
    resolve_variants,
    shipped_variant_files,
)
from vlafoundry.data.paraphrase import ParaphraseMap

MAPPING = {
    "open the door": ["pull the door open please", "get that door open", "door: open it", "swing it open"],
    "go to the {color} {object}": ["head for the {color} {object}", "the {object} that is {color}: walk there"],
}


def _batch(texts: list[str]) -> dict:
    return {"instruction": list(texts), "instruction_id": torch.arange(len(texts)), "state": torch.zeros(len(texts), 2)}


def test_rewrites_covered_rows_uniformly_and_leaves_the_rest():
    aug = InstructionVariants(ParaphraseMap.from_mapping(MAPPING), p=1.0)
    texts = ["open the door", "close the window", "go to the red ball"] * 2000
    batch = _batch(texts)
    out = aug(batch, torch.Generator().manual_seed(0))
    assert batch["instruction"] == texts  # the input is not modified
    assert torch.equal(out["instruction_id"], batch["instruction_id"]) and out["state"] is batch["state"]
    door = Counter(o for t, o in zip(texts, out["instruction"]) if t == "open the door")
    assert set(door) == set(MAPPING["open the door"])
    # uniform over 4 variants, 2000 draws: each count within 6 standard deviations of 500 (sd ~19)
    assert all(abs(n - 500) < 6 * 19.4 for n in door.values()), door
    assert {o for t, o in zip(texts, out["instruction"]) if t == "close the window"} == {"close the window"}
    assert {o for t, o in zip(texts, out["instruction"]) if t == "go to the red ball"} == {
        "head for the red ball", "the ball that is red: walk there"}


def test_probability_determinism_and_expand():
    aug = InstructionVariants(ParaphraseMap.from_mapping(MAPPING), p=0.25)
    texts = ["open the door"] * 4000
    a = aug(_batch(texts), torch.Generator().manual_seed(7))["instruction"]
    b = aug(_batch(texts), torch.Generator().manual_seed(7))["instruction"]
    assert a == b  # the trainer's per-step generator makes a resumed run draw the same variants
    kept = sum(x == "open the door" for x in a) / len(a)
    assert abs(kept - 0.75) < 0.03, kept
    assert InstructionVariants(aug.variants, p=0.0)(_batch(texts))["instruction"] == texts
    assert aug.expand(["go to the blue key", "open the door", "go to the blue key", "stop"]) == [
        "head for the blue key", "the key that is blue: walk there", *MAPPING["open the door"]]
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"instruction_variant_p: expected a probability in \[0, 1\]"):
            InstructionVariants(aug.variants, p=bad)


def test_with_variant_texts_lists_the_variants_and_forwards_the_rest():
    class Data:
        instructions = ["open the door", "stop"]
        stats = {"x": 1}

        def __len__(self) -> int:
            return 5

    view = WithVariantTexts(Data(), InstructionVariants(ParaphraseMap.from_mapping(MAPPING)))
    assert view.instructions == ["open the door", "stop", *MAPPING["open the door"]]
    assert len(view) == 5 and view.stats == {"x": 1}


def test_files_resolve_by_name_or_path_and_errors_name_the_problem(tmp_path):
    assert {"metaworld", "babyai"} <= set(shipped_variant_files())
    assert resolve_variants("metaworld").name == "metaworld.json"
    f = tmp_path / "v.json"
    f.write_text(json.dumps(MAPPING))
    assert resolve_variants(str(f)) == f and len(load_variants(str(f)).variants) == 2
    with pytest.raises(FileNotFoundError, match=r"expected a shipped name \[.*'metaworld'.*\].*got 'nope'"):
        resolve_variants("nope")
    f.write_text(json.dumps({"open the door": []}))
    with pytest.raises(ValueError, match="open the door"):
        load_variants(str(f))
