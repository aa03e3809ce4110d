"""Validity of the hand-written training-time instruction variant files (data/instruction_variants/*.json).

The variants augment training instructions only; they must never coincide with a training phrasing (that would
blur tasks) nor with a held-out evaluation paraphrase (that would leak the test phrasings into training). The
evaluation files are compared programmatically here, never printed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import vlafoundry
from vlafoundry.envs.metaworld_instructions import INSTRUCTIONS
from vlafoundry.eval.paraphrase import ParaphraseMap, load_paraphrases
from vlafoundry.eval.subgroups import normalize_instruction

SRC = Path(vlafoundry.__file__).resolve().parent
ROOT = SRC.parent.parent
VARIANTS = SRC / "data" / "instruction_variants"
MW_FILE = VARIANTS / "metaworld.json"
BABYAI_FILE = VARIANTS / "babyai.json"
EVAL_FILES = (
    SRC / "eval" / "paraphrases" / "metaworld-mt10-unseen.json",
    SRC / "eval" / "paraphrases" / "babyai.json",
    ROOT / "tests" / "eval" / "generalisation_target_paraphrases.json",
    ROOT / "tests" / "eval" / "generalisation_target_paraphrases_mt10.json",
)
BABYAI_LEVELS = ("babyai/GoToLocal", "babyai/PickupLoc", "babyai/PutNextLocal")
N_SEEDS = 40
N_MW_VARIANTS = 8


def _raw(path: Path) -> dict:
    return {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if not k.lstrip().startswith("#")}


def _training_phrasings() -> set[str]:
    return {normalize_instruction(p) for phr in INSTRUCTIONS.values() for p in phr}


def _eval_alternatives() -> set[str]:
    out: set[str] = set()
    for path in EVAL_FILES:
        assert path.is_file(), f"evaluation paraphrase file missing: {path}"
        for alts in _raw(path).values():
            out.update(normalize_instruction(a) for a in alts)
    return out


def _all_variants(path: Path) -> set[str]:
    return {normalize_instruction(a) for alts in _raw(path).values() for a in alts}


@pytest.mark.parametrize("path", [MW_FILE, BABYAI_FILE], ids=lambda p: p.name)
def test_variant_file_loads(path: Path) -> None:
    pmap = load_paraphrases(path)
    assert len(pmap) > 0
    data = json.loads(path.read_text(encoding="utf-8"))
    assert "# about" in data and "training" in data["# about"].lower()


def test_metaworld_covers_every_training_phrasing_with_one_list_per_task() -> None:
    pmap = load_paraphrases(MW_FILE)
    assert len(INSTRUCTIONS) == 50
    for task, phrasings in INSTRUCTIONS.items():
        lists = []
        for p in phrasings:
            found = pmap.alternatives(p)
            assert found is not None, f"{task}: training phrasing {p!r} is not a key of {MW_FILE.name}"
            assert found[1] == {}, f"{task}: {p!r} matched a template, expected an exact key"
            lists.append(found[0])
        assert all(lst == lists[0] for lst in lists), f"{task}: its keys map to different variant lists"
        assert len(lists[0]) == N_MW_VARIANTS, f"{task}: expected {N_MW_VARIANTS} variants, found {len(lists[0])}"
        assert len({normalize_instruction(v) for v in lists[0]}) == N_MW_VARIANTS, f"{task}: duplicate variants"
    expected_keys = _training_phrasings()
    assert set(pmap.exact) == expected_keys and not pmap.templates, "keys must be exactly the training phrasings"


def test_metaworld_variants_belong_to_one_task_only() -> None:
    pmap = load_paraphrases(MW_FILE)
    owner: dict[str, str] = {}
    for task, phrasings in INSTRUCTIONS.items():
        for v in pmap.exact[normalize_instruction(phrasings[0])]:
            n = normalize_instruction(v)
            assert owner.setdefault(n, task) == task, f"variant {v!r} is listed for {owner[n]} and {task}"


@pytest.mark.parametrize("path", [MW_FILE, BABYAI_FILE], ids=lambda p: p.name)
def test_no_variant_is_a_training_phrasing(path: Path) -> None:
    clash = sorted(_all_variants(path) & _training_phrasings())
    assert not clash, f"{path.name}: variants equal to a training phrasing of some task: {clash}"


@pytest.mark.parametrize("path", [MW_FILE, BABYAI_FILE], ids=lambda p: p.name)
def test_no_variant_is_an_evaluation_paraphrase(path: Path) -> None:
    clash = sorted(_all_variants(path) & _eval_alternatives())
    # Only our own strings are named; the evaluation files' other contents stay unprinted.
    assert not clash, f"{path.name}: {len(clash)} variant(s) equal an evaluation paraphrase: {clash}"


def _missions() -> list[str]:
    from vlafoundry.envs import make_env

    out: list[str] = []
    for level in BABYAI_LEVELS:
        env = make_env(level)
        out.extend(env.reset(seed=s)["instruction"] for s in range(N_SEEDS))
    return out


@pytest.fixture(scope="module")
def babyai_missions() -> list[str]:
    pytest.importorskip("minigrid")
    return _missions()


def _filled(pmap: ParaphraseMap, mission: str) -> list[str]:
    found = pmap.alternatives(mission)
    assert found is not None
    return [normalize_instruction(pmap.rewrite(mission, i) or "") for i in range(len(found[0]))]


def test_babyai_rewrites_every_local_mission_keeping_colour_and_object(babyai_missions: list[str]) -> None:
    from vlafoundry.envs.babyai_missions import BABYAI_COLORS, BABYAI_OBJECTS

    pmap = load_paraphrases(BABYAI_FILE)
    training = _training_phrasings()
    for mission in babyai_missions:
        found = pmap.alternatives(mission)
        assert found is not None, f"mission {mission!r} is not rewritten by {BABYAI_FILE.name}"
        assert 6 <= len(found[0]) <= 8, f"{mission!r}: expected 6-8 variants, found {len(found[0])}"
        words = normalize_instruction(mission).split()
        needed = [w for w in words if w in BABYAI_COLORS or w in BABYAI_OBJECTS]
        assert needed, f"mission {mission!r} names no colour or object"
        for i in range(len(found[0])):
            out = pmap.rewrite(mission, i)
            assert out is not None
            out_words = normalize_instruction(out).replace(",", " ").replace(":", " ").replace("?", " ").split()
            for w in needed:
                assert out_words.count(w) >= words.count(w), f"{mission!r} -> {out!r}: lost {w!r}"
            assert normalize_instruction(out) != normalize_instruction(mission), f"{mission!r}: identity variant"
            assert normalize_instruction(out) not in training


def test_babyai_filled_variants_differ_from_filled_evaluation_paraphrases(babyai_missions: list[str]) -> None:
    ours = load_paraphrases(BABYAI_FILE)
    evals = [load_paraphrases(p) for p in EVAL_FILES]
    for mission in babyai_missions:
        mine = set(_filled(ours, mission))
        for ev in evals:
            if ev.alternatives(mission) is None:
                continue
            clash = sorted(mine & set(_filled(ev, mission)))
            # Only our own (filled) variants are named, as in the raw comparison above.
            assert not clash, f"{mission!r}: our variants {clash} equal an evaluation paraphrase once filled"
