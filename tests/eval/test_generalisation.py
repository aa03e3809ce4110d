"""The language generalisation suite: the held-out colour-object pairs option (metadata, no held-out pair
generated), the shipped and target paraphrase files, and the three probes run by ``vlafoundry eval
--generalisation``."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
from random_policy import RandomPolicy  # tests/random_policy.py

from vlafoundry.data.generate import (
    generate_dataset,
    held_out_in,
    mission_pairs,
    parse_hold_out_pairs,
)
from vlafoundry.eval.generalisation import (
    TEMPLATE_REWRITE,
    _held_out_and_matched_jobs,
    held_out_pairs_of,
    mission_kind,
    run_generalisation,
    scan_seeds,
    shipped_paraphrases,
    unique_target,
)
from vlafoundry.eval.paraphrase import ParaphraseMap, load_paraphrases

HERE = Path(__file__).parent
TARGET = HERE / "generalisation_target_paraphrases.json"
PAIRS = ["red ball", "green key", "grey box", "blue ball"]


# --------------------------------------------------------------------------------------- held-out pairs option


def test_parse_pairs_and_mission_pairs():
    assert parse_hold_out_pairs("Red Ball, green key,,") == ("green key", "red ball")
    assert parse_hold_out_pairs(["grey box", "grey box"]) == ("grey box",)
    assert parse_hold_out_pairs(None) == ()
    with pytest.raises(ValueError, match=r"expected 'colour object' .* got 'pink ball'"):
        parse_hold_out_pairs("pink ball")
    with pytest.raises(ValueError, match=r"got 'red'"):
        parse_hold_out_pairs(["red"])
    assert mission_pairs("put the red ball next to a grey box") == ["red ball", "grey box"]
    assert mission_pairs("go to a key") == []
    assert held_out_in("pick up the grey box behind you", PAIRS) == "grey box"
    assert held_out_in("go to the grey ball", PAIRS) is None


def test_held_out_pairs_are_never_generated_and_recorded(tmp_path):
    res = generate_dataset("babyai/GoToLocal", 30, tmp_path / "ds", workers=1, seed=0, progress=False,
                           hold_out_pairs=",".join(PAIRS))  # fmt: skip
    meta = json.loads((tmp_path / "ds" / "vlafoundry.json").read_text())
    assert meta["generation"]["hold_out_pairs"] == sorted(PAIRS)
    counts = meta["counts"]
    assert counts["episodes"] == 30 and counts["held_out"] > 0
    assert counts["seeds_used"] == counts["episodes"] + counts["failed"] + counts["held_out"]
    assert all(held_out_in(i, PAIRS) is None for i in meta["instructions"])
    assert not any(f["reason"].startswith("held out") for f in meta["failed_seeds"])
    assert res.metadata["counts"] == counts
    # the same seeds without the option do name held-out pairs
    from vlafoundry.envs import make_env

    env = make_env("babyai/GoToLocal")
    named = [s for s in range(counts["seeds_used"]) if held_out_in(env.reset(seed=s)["instruction"], PAIRS)]
    assert len(named) == counts["held_out"]
    cfg = types.SimpleNamespace(data=types.SimpleNamespace(dataset_dir=lambda: tmp_path / "ds", hold_out_pairs=[]))
    assert held_out_pairs_of(cfg) == sorted(PAIRS)  # read from the metadata


def test_hold_out_pairs_config_key_and_errors(tmp_path):
    from vlafoundry.config import ConfigError
    from vlafoundry.train.config import load_config

    cfg = load_config("babyai-gotolocal", ["--data.hold_out_pairs", "[red ball, green key]"])
    assert cfg.data.hold_out_pairs == ["green key", "red ball"]
    assert cfg.data.dataset_dir().name.endswith("-ho-green_key+red_ball")
    assert not load_config("babyai-gotolocal", []).data.dataset_dir().name.count("-ho-")
    with pytest.raises(ConfigError, match="data.hold_out_pairs: expected 'colour object'.*got 'red bal'"):
        load_config("babyai-gotolocal", ["--data.hold_out_pairs", "[red bal]"])
    # with data.augment colour the permutations avoid the held-out pairs (tests/envs/test_augment_hold_out.py)
    assert load_config("babyai-gotolocal", ["--data.hold_out_pairs", "[red ball]", "--data.augment", "colour"]
                       ).data.augment == "colour"
    with pytest.raises(ValueError, match="hold_out_pairs: expected a BabyAI env"):
        generate_dataset("metaworld/reach", 1, tmp_path / "mw", hold_out_pairs="red ball", progress=False)


# ------------------------------------------------------------------------------------------- paraphrase files


def _missions(level: str, n: int = 40) -> list[str]:
    from vlafoundry.envs import make_env

    env = make_env(level)
    return sorted({env.reset(seed=s)["instruction"] for s in range(n)})


@pytest.mark.parametrize("family", ["babyai", "metaworld"])
def test_shipped_paraphrase_files_load(family):
    path = shipped_paraphrases(family)
    assert path is not None and path.is_file()
    assert len(load_paraphrases(path)) > 0


@pytest.mark.parametrize("level", ["babyai/GoToLocal", "babyai/PickupLoc", "babyai/PutNextLocal", "babyai/GoToObj"])
def test_babyai_file_rewrites_every_mission_of_the_local_levels(level):
    para = load_paraphrases(shipped_paraphrases("babyai"))
    for m in _missions(level):
        alts, _ = para.alternatives(m)
        rewrites = {para.rewrite(m, k) for k in range(len(alts))}
        assert m not in rewrites and len(rewrites) == len(alts), m


def test_babyai_file_is_varied():
    data = json.loads(shipped_paraphrases("babyai").read_text())
    goto = data["go to {article} {color} {object}"]
    assert len(goto) >= 10
    assert any(a.startswith("please") or "could you" in a for a in goto)  # polite
    assert any(not a.startswith("go to") and a.index("{object}") < a.index(":") for a in goto if ":" in a)  # reordered
    assert any(len(a.split()) >= 9 for a in goto)  # longer sentences
    assert any(w in a.split() for a in goto for w in ("too", "that", "one"))  # typo / other articles
    assert any("{object} that is {color}" in a for a in goto)  # other word order


def test_target_file_is_independent_of_the_shipped_one():
    target = load_paraphrases(TARGET)
    shipped = json.loads(shipped_paraphrases("babyai").read_text())
    shipped_alts = {a for k, v in shipped.items() if not k.startswith("#") for a in v}
    target_alts = {a for k, v in json.loads(TARGET.read_text()).items() if not k.startswith("#") for a in v}
    assert not shipped_alts & target_alts
    for m in _missions("babyai/GoToLocal"):
        assert target.rewrite(m) not in (None, m)


def test_independent_mt10_paraphrases_cover_every_training_phrasing_and_share_nothing():
    """The MT10 target file: every training instruction of the 10 tasks is rewritten, into words that are neither a
    training instruction of any Meta-World task nor an alternative of the shipped MT10 file."""
    from vlafoundry.envs.metaworld import MT10_TASKS
    from vlafoundry.envs.metaworld_instructions import INSTRUCTIONS

    path = HERE / "generalisation_target_paraphrases_mt10.json"
    target = load_paraphrases(path)
    raw = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("#")}
    shipped = json.loads(shipped_paraphrases("metaworld").read_text())
    shipped_alts = {a for k, v in shipped.items() if not k.startswith("#") for a in v}
    alts = {a for v in raw.values() for a in v}
    training = {p for v in INSTRUCTIONS.values() for p in v}
    assert not alts & shipped_alts and not alts & training
    for task in MT10_TASKS:
        for phrase in INSTRUCTIONS[task]:
            assert target.rewrite(phrase) not in (None, phrase)
            assert len(raw[phrase]) == 4


# ------------------------------------------------------------------------------------------------- the probes


def test_template_probe_seeds_name_a_unique_target():
    from vlafoundry.envs import make_env

    seeds = scan_seeds("babyai/GoToLocal", {}, 10**9, 3, unique_target, 2000)
    assert len(seeds) == 3
    env = make_env("babyai/GoToLocal")
    rewrite = ParaphraseMap.from_mapping(TEMPLATE_REWRITE)
    for s in seeds:
        m = env.reset(seed=s)["instruction"]
        target = m.split()[-1]
        assert sum(o is not None and o.type == target for o in env.unwrapped.grid.grid) == 1
        assert rewrite(m) == f"go to the {target}"


def test_suite_runs_three_probes_on_the_same_seeds():
    from vlafoundry.eval.rollout import VectorRollout, evaluate_policy

    cfg = types.SimpleNamespace(data=types.SimpleNamespace(hold_out_pairs=PAIRS))
    policy = RandomPolicy()
    with VectorRollout(4, 0, {"max_steps": 5}) as pool:
        base = evaluate_policy(policy, ["babyai/GoToLocal"], episodes=6, rollout=pool, max_steps=5)
        rows, notes = run_generalisation(policy, ["babyai/GoToLocal"], pool, base, episodes=6, cfg=cfg,
                                         max_steps=5, log=lambda s: None)  # fmt: skip
    assert [r.probe for r in rows] == ["paraphrases", "held-out pairs", "held-out template"]
    para, pairs, tpl = (r.to_dict() for r in rows)
    assert para["episodes"] == para["in_dist_episodes"] == 6 and para["rewritten_fraction"] == 1.0
    assert para["detail"] == "file babyai.json"
    assert sum(n for _, n in para["per_phrasing"].values()) == 6
    assert set(para["per_phrasing"]) <= set(json.loads(shipped_paraphrases("babyai").read_text())[
        "go to {article} {color} {object}"])
    assert pairs["episodes"] == pairs["in_dist_episodes"] == 6  # a matched control of the same size
    assert pairs["note"].startswith("in-distribution: episodes naming only trained pairs, matched by template")
    assert sum(int(c.split("(")[1].split()[0]) for c in pairs["note"].split("per pair ")[1].split(", ")) == 6
    assert tpl["episodes"] == tpl["in_dist_episodes"] == 6
    for d in (para, pairs, tpl):
        assert 0.0 <= d["ci_low"] <= d["success_rate"] <= d["ci_high"] <= 1.0
        assert d["delta"] == pytest.approx(d["success_rate"] - d["in_dist_rate"])
    assert notes == []


def test_held_out_pairs_control_is_matched_by_template_and_object():
    """The in-distribution control of the held-out pairs probe: as many episodes, from the same first seed, naming
    trained pairs only, with the same (template, object type) counts as the held-out episodes."""
    from collections import Counter

    from vlafoundry.envs import make_env

    held, ctrl, short = _held_out_and_matched_jobs(["babyai/GoToLocal"], {}, 100, 30, ["red ball", "grey key"])
    assert short == "" and len(held) == len(ctrl) == 30
    env = make_env("babyai/GoToLocal")
    held_m = [env.reset(seed=s)["instruction"] for _, s, _ in held]
    ctrl_m = [env.reset(seed=s)["instruction"] for _, s, _ in ctrl]
    assert all(held_out_in(m, ["red ball", "grey key"]) for m in held_m)
    assert all(mission_pairs(m) and held_out_in(m, ["red ball", "grey key"]) is None for m in ctrl_m)
    assert Counter(map(mission_kind, held_m)) == Counter(map(mission_kind, ctrl_m))
    assert {o for _, o in map(mission_kind, ctrl_m)} == {"ball", "key"}  # not box: no held-out pair is a box
    assert min(s for _, s, _ in held) >= 100 and min(s for _, s, _ in ctrl) >= 100
    assert mission_kind("go to a red ball") == ("go to a {color} {object}", "ball")


def test_suite_notes_what_it_cannot_measure():
    from vlafoundry.eval.rollout import VectorRollout, evaluate_policy

    cfg = types.SimpleNamespace(data=types.SimpleNamespace(hold_out_pairs=[]))
    with VectorRollout(2, 0, {"max_steps": 3}) as pool:
        base = evaluate_policy(RandomPolicy(), ["babyai/PickupLoc"], episodes=2, rollout=pool, max_steps=3)
        rows, notes = run_generalisation(RandomPolicy(), ["babyai/PickupLoc"], pool, base, episodes=2, cfg=cfg,
                                         max_steps=3, log=lambda s: None)  # fmt: skip
    assert [r.probe for r in rows] == ["paraphrases"]
    assert any("no held-out pairs" in n for n in notes) and any("no held-out template" in n for n in notes)


def test_eval_cli_generalisation_writes_the_table(tmp_path, monkeypatch):
    import vlafoundry.train.trainer
    from vlafoundry.cli.main import main
    from vlafoundry.train.config import load_config

    cfg = load_config("babyai-gotolocal", ["--data.episodes", "50", "--data.path", str(tmp_path / "no-data")])
    monkeypatch.setattr(vlafoundry.train.trainer, "load_run", lambda path, device="cpu": (RandomPolicy(), cfg, {}))
    run = tmp_path / "run"
    (run / "checkpoints" / "step_0000010").mkdir(parents=True)
    rc = main(["eval", str(run), "--gifs", "0", "--out", str(tmp_path / "o"), "--episodes", "3", "--workers", "0",
               "--max-steps", "4", "--generalisation"])
    assert rc == 0
    res = json.loads((tmp_path / "o" / "eval.json").read_text())
    assert [g["probe"] for g in res["generalisation"]] == ["paraphrases", "held-out template"]
    assert res["options"]["generalisation"] is True
    assert "Language generalisation suite" in (tmp_path / "o" / "report.md").read_text()


def test_hold_out_scope_scene_keeps_the_pairs_out_of_every_level(tmp_path):
    """``hold_out_scope="scene"``: no recorded mission names a held-out pair and no recorded level holds one (checked
    in every frame's 7x7 view and, replayed from the seeds, in the whole level); the seeds skipped for a level that
    holds one are exactly those a fresh env says hold one; the scope is recorded and names its own cache folder."""
    import numpy as np
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    from vlafoundry.config import ConfigError
    from vlafoundry.data import DemoDataset
    from vlafoundry.data.holdout import IN_LEVEL, held_out_reason, scene_pairs
    from vlafoundry.envs import make_env
    from vlafoundry.train.config import load_config

    pairs = ["green key", "red ball"]
    res = generate_dataset("babyai/GoToLocal", 12, tmp_path / "ds", hold_out_pairs=pairs, hold_out_scope="scene",
                           progress=False)
    meta, counts = res.metadata, res.metadata["counts"]
    assert meta["generation"]["hold_out_scope"] == "scene" and counts["episodes"] == 12
    data = DemoDataset(tmp_path / "ds", split="all")
    frames = np.concatenate([data[i]["image"][None] for i in range(counts["steps"])])
    for pair in pairs:
        colour, obj = pair.split()
        cell = (frames[..., 0] == OBJECT_TO_IDX[obj]) & (frames[..., 1] == COLOR_TO_IDX[colour])
        assert not cell.any(), pair
    env = make_env("babyai/GoToLocal")
    reasons = []
    for seed in range(counts["seeds_used"]):
        obs = env.reset(seed=seed)
        reasons.append(held_out_reason(obs["instruction"], env.unwrapped, pairs, "scene"))
        if reasons[-1] is None:
            assert not set(scene_pairs(env.unwrapped)) & set(pairs), seed
    assert sum(r is None for r in reasons) == counts["episodes"] + counts["failed"]
    assert sum(r is not None for r in reasons) == counts["held_out"]
    assert sum(r is not None and r.endswith(IN_LEVEL) for r in reasons) > counts["held_out"] / 2  # most: in level
    # mission scope (the default) keeps levels that hold a pair as long as the mission does not name it
    assert held_out_reason("go to the blue box", types.SimpleNamespace(
        grid=types.SimpleNamespace(grid=[types.SimpleNamespace(type="ball", color="red")])), pairs) is None
    with pytest.raises(ValueError, match=r"hold_out_scope: expected one of \['mission', 'scene'\], got 'room'"):
        generate_dataset("babyai/GoToLocal", 1, tmp_path / "x", hold_out_pairs=pairs, hold_out_scope="room",
                         progress=False)
    from vlafoundry.train.config import apply_dataset_metadata

    passed = load_config("babyai-gotolocal", ["--data.path", str(tmp_path / "ds")])
    assert "data.hold_out_scope 'mission' -> 'scene'" in apply_dataset_metadata(passed, tmp_path / "ds")
    assert passed.data.hold_out_scope == "scene"  # a dataset passed by path says what it held out
    cfg = load_config("babyai-gotolocal", ["--data.hold_out_pairs", "[red ball]", "--data.hold_out_scope", "scene"])
    assert cfg.data.dataset_dir().name.endswith("-ho-red_ball-scene")
    with pytest.raises(ConfigError, match="data.hold_out_scope"):
        load_config("babyai-gotolocal", ["--data.hold_out_scope", "level"])


def test_hold_out_scope_scene_gives_up_when_almost_no_level_is_left(tmp_path):
    """Seeds skipped for held-out pairs do not count against the expert's attempts, but generation gives up with a
    message naming the pairs and the scope when they leave (almost) no level."""
    many = ["red ball", "green key", "yellow box", "blue ball", "grey ball", "purple ball", "yellow ball",
            "green ball", "red key", "blue key"]
    with pytest.raises(RuntimeError, match=r"seeds skipped for the held-out pairs .* \(scope 'scene'\).*giving up"):
        generate_dataset("babyai/GoToLocal", 20, tmp_path / "ds", hold_out_pairs=many, hold_out_scope="scene",
                         progress=False)
