"""Closed-loop rollouts: statistics, determinism, seeds, per-env resets, corruption, robustness, subgroups."""

from __future__ import annotations

import numpy as np
import pytest

from vlafoundry.eval.robustness import default_conditions, run_robustness
from vlafoundry.eval.rollout import (
    DEFAULT_SEED_START,
    ObservationCorruption,
    evaluate_policy,
    replay_frames,
    resolve_seed_start,
    select_gif_episodes,
    summarize_episodes,
)
from vlafoundry.eval.subgroups import mission_subgroups, mission_template, subgroup_success

ENV = "babyai/GoToLocal"


class RandomPolicy:
    """Seeded random policy over BabyAI's turn/forward actions; records what it is given."""

    def __init__(self, seed: int = 0, num_actions: int = 3) -> None:
        self.rng = np.random.default_rng(seed)
        self.num_actions = num_actions
        self.resets: list[list[int] | None] = []
        self.batches: list[dict] = []

    def reset(self, env_indices=None) -> None:
        self.resets.append(None if env_indices is None else list(env_indices))

    def select_action(self, obs: dict) -> np.ndarray:
        self.batches.append(obs)
        return self.rng.integers(0, self.num_actions, size=len(obs["instruction"]))


def _key(res):
    return [(e["index"], e["seed"], e["success"], e["length"], e["return"], tuple(e["actions"])) for e in res.episodes]


def test_summary_uses_wilson_interval_known_value():
    eps = [{"success": i < 8, "length": 10 + i, "return": 0.5 * (i < 8), "paraphrased": False} for i in range(10)]
    row = summarize_episodes(eps, "t")
    assert row["success_rate"] == pytest.approx(0.8)
    # Wilson 95% interval of 8/10 (Agresti & Coull 1998 / standard tables): [0.4902, 0.9433]
    assert row["ci_low"] == pytest.approx(0.4902, abs=1e-4)
    assert row["ci_high"] == pytest.approx(0.9433, abs=1e-4)
    assert row["mean_length"] == pytest.approx(14.5)
    assert row["mean_return"] == pytest.approx(0.4)


def test_fixed_seed_is_deterministic_and_independent_of_workers():
    a = evaluate_policy(RandomPolicy(3), ENV, episodes=12, num_envs=4, workers=0)
    b = evaluate_policy(RandomPolicy(3), ENV, episodes=12, num_envs=4, workers=0)
    c = evaluate_policy(RandomPolicy(3), ENV, episodes=12, num_envs=4, workers=2)
    assert _key(a) == _key(b) == _key(c)
    assert a.rows == b.rows
    d = evaluate_policy(RandomPolicy(4), ENV, episodes=12, num_envs=4, workers=0)
    assert _key(d) != _key(a)  # the policy seed matters, so the comparison above is not vacuous


def test_episode_bookkeeping_and_per_env_policy_reset():
    pol = RandomPolicy(0)
    res = evaluate_policy(pol, ENV, episodes=10, num_envs=4, workers=0, seed_start=DEFAULT_SEED_START)
    assert [e["index"] for e in res.episodes] == list(range(10))
    assert [e["seed"] for e in res.episodes] == [DEFAULT_SEED_START + i for i in range(10)]
    assert res.summary["episodes"] == 10
    assert res.summary["successes"] == sum(e["success"] for e in res.episodes)
    assert all(1 <= e["length"] <= 64 for e in res.episodes)
    assert all(len(e["actions"]) == e["length"] for e in res.episodes)
    # every batch has one row per env slot, full reset first, then per-row resets for the 6 episodes started later
    assert {len(b["instruction"]) for b in pol.batches} == {4}
    assert pol.resets[0] is None
    row_resets = [i for r in pol.resets[1:] for i in r]
    assert len(row_resets) == 10 - 4 and set(row_resets) <= {0, 1, 2, 3}
    assert pol.batches[0]["image"].shape == (4, 7, 7, 3) and pol.batches[0]["state"].shape == (4, 4)
    assert pol.batches[0]["instruction_present"].all()


class RowPolicy(RandomPolicy):
    """Action a pure function of the row's observation (row-deterministic), so batch composition cannot matter."""

    def select_action(self, obs):
        self.batches.append(obs)
        img = obs["image"].reshape(len(obs["instruction"]), -1).astype(np.int64)
        return (img * np.arange(1, img.shape[1] + 1)).sum(1) % 3


def test_final_wave_compaction_for_stateless_policy():
    full, compact = RowPolicy(), RowPolicy()
    compact.stateless = True
    a = evaluate_policy(full, ENV, episodes=9, num_envs=4)
    b = evaluate_policy(compact, ENV, episodes=9, num_envs=4)
    assert _key(a) == _key(b)
    assert {len(x["instruction"]) for x in full.batches} == {4}
    sizes = [len(x["instruction"]) for x in compact.batches]
    assert min(sizes) < 4 and sizes == sorted(sizes, reverse=True)  # shrinks in the final wave only
    assert len(compact.batches) == len(full.batches)


def test_wrong_action_count_raises():
    class Bad(RandomPolicy):
        def select_action(self, obs):
            return np.zeros(1, dtype=np.int64)

    with pytest.raises(ValueError, match="expected 3 actions"):
        evaluate_policy(Bad(), ENV, episodes=3, num_envs=3, workers=0)


def test_seed_ranges_disjoint_from_training():
    assert resolve_seed_start(100, 10, [(0, 50)]) == (100, None)
    with pytest.warns(UserWarning, match="shifted"):
        start, note = resolve_seed_start(40, 10, [(0, 50), (50, 70)])
    assert start == 70 and "overlapped" in note
    with pytest.raises(ValueError, match="overlap training seeds"):
        resolve_seed_start(40, 10, [(0, 50)], on_overlap="error")
    with pytest.warns(UserWarning):
        res = evaluate_policy(RandomPolicy(), ENV, episodes=3, num_envs=3, seed_start=5, training_seeds=[(0, 100)])
    assert [e["seed"] for e in res.episodes] == [100, 101, 102]
    assert res.config["seed_start"] == 100


def test_corruption_removes_and_noises_deterministically():
    pol = RandomPolicy()
    evaluate_policy(pol, ENV, episodes=2, num_envs=2, corruption=ObservationCorruption(remove=("instruction", "image")))
    b = pol.batches[0]
    assert not b["instruction_present"].any() and b["instruction"] == ["", ""]
    assert not b["image_present"].any() and not b["image"].any()
    assert b["state_present"].all() and b["state"].sum() == pytest.approx(2.0)  # one-hot directions untouched

    def first_batch(corr):
        p = RandomPolicy()
        evaluate_policy(p, ENV, episodes=2, num_envs=2, corruption=corr)
        return p.batches[0]

    clean = first_batch(None)
    noisy = ObservationCorruption(state_noise=0.5, image_noise=0.5, instruction_noise=1.0)
    n1, n2 = first_batch(noisy), first_batch(noisy)
    assert np.array_equal(n1["image"], n2["image"]) and np.array_equal(n1["state"], n2["state"])
    assert n1["instruction"] == n2["instruction"] != clean["instruction"]
    assert not np.array_equal(n1["image"], clean["image"]) and not np.allclose(n1["state"], clean["state"])
    assert n1["image"].max() <= clean["image"].max()  # cell noise copies valid cells, never invents codes
    with pytest.raises(ValueError, match="remove"):
        ObservationCorruption(remove=("audio",))
    with pytest.raises(ValueError, match="image_noise"):
        ObservationCorruption(image_noise=1.5)


def test_per_task_rows_for_several_envs():
    res = evaluate_policy(RandomPolicy(), [ENV, "babyai/GoToObj"], episodes=3, num_envs=3)
    assert [r["task"] for r in res.rows] == [ENV, "babyai/GoToObj", "all"]
    assert [r["episodes"] for r in res.rows] == [3, 3, 6]


def test_robustness_rows_with_modality_removed():
    conds = [ObservationCorruption(name="full input"), ObservationCorruption(remove=("image",)),
             ObservationCorruption(state_noise=0.3)]  # fmt: skip
    rows = run_robustness(RandomPolicy(), ENV, conditions=conds, episodes=4, num_envs=4,
                          offline_fn=lambda c: {"offline_metric": float(len(c.remove))})  # fmt: skip
    assert [r["condition"] for r in rows] == ["full input", "no image", "state noise σ=0.3"]
    assert rows[0]["delta_success"] == 0.0
    assert rows[1]["offline_metric"] == 1.0 and rows[0]["offline_metric"] == 0.0
    assert all(r["episodes"] == 4 and 0 <= r["ci_low"] <= r["success_rate"] <= r["ci_high"] <= 1 for r in rows)
    labels = [c.label for c in default_conditions(has_image=False)]
    assert "no image" not in labels and "no instruction" in labels and "no state" in labels


def test_replay_reproduces_episode_and_gif_selection():
    res = evaluate_policy(RandomPolicy(1), ENV, episodes=6, num_envs=3)
    rec = res.episodes[0]
    frames = replay_frames(rec)
    assert len(frames) == rec["length"] + 1 and frames[0].ndim == 3 and frames[0].dtype == np.uint8
    chosen = select_gif_episodes(res.episodes, 1)
    assert sum(bool(r["success"]) for r in chosen) <= 1 and len(chosen) <= 2
    assert all(r in res.episodes for r in chosen)


def test_mission_subgroups_and_table():
    assert mission_template("go to the red ball") == "go to the {color} {object}"
    assert mission_template("go to a key") == "go to a {object}"
    assert mission_subgroups("pick up the blue box, then go to a door", task="t") == {
        "template": "pick up the {color} {object}, then go to a {object}", "object": "box", "colour": "blue",
        "task": "t"}  # fmt: skip
    assert mission_subgroups("reach the goal")["object"] == "none"
    recs = [{"instruction": "go to the red ball", "success": True}, {"instruction": "go to the red key", "success": False},
            {"instruction": "go to a key", "success": False}]  # fmt: skip
    tab = subgroup_success(recs, keys=("object", "colour"))
    assert {g["group"]: g["success_rate"] for g in tab["object"]["groups"]} == {"ball": 1.0, "key": 0.0}
    assert tab["object"]["gap"] == 1.0 and tab["object"]["worst"] == "key" and tab["object"]["best"] == "ball"
    assert {g["group"]: g["episodes"] for g in tab["colour"]["groups"]} == {"red": 2, "none": 1}
    with pytest.raises(ValueError, match="keys"):
        subgroup_success(recs, keys=("size",))
