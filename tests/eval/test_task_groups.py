"""LeRobot's Meta-World MT50 protocol: the difficulty groups, their aggregation, and the group table in eval.json and
the report (from a fake result; no env is stepped)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from vlafoundry.envs import expand_env_names, get_family
from vlafoundry.envs.metaworld_protocol import GROUP_SUITES, MT50_DIFFICULTY, PROTOCOL, PUBLISHED_MT50, difficulty_of
from vlafoundry.eval.options import EvalOptions
from vlafoundry.eval.pipeline import EvalRun, _write
from vlafoundry.eval.rollout import build_result
from vlafoundry.eval.task_groups import group_success, stratified_interval, task_groups_for
from vlafoundry.train.config import load_config

MT50 = expand_env_names("metaworld/mt50")


def _records(names, episodes, rate, seed=0):
    """Fake episode records: ``episodes(name)`` per task, each a success with probability ``rate(name)``."""
    rng = np.random.default_rng(seed)
    out = []
    for name in names:
        for i in range(episodes(name)):
            out.append({"index": len(out), "env": name, "task": name, "seed": 10**9 + i, "instruction": "do it",
                        "policy_instruction": "do it", "paraphrased": False, "success": bool(rng.random() < rate(name)),
                        "length": 7, "return": 0.5})  # fmt: skip
    return out


def test_groups_cover_the_50_mt50_tasks_once_each():
    listed = [t for tasks in MT50_DIFFICULTY.values() for t in tasks]
    assert len(listed) == 50 and len(set(listed)) == 50
    assert {f"metaworld/{t}" for t in listed} == set(MT50)
    assert [len(v) for v in MT50_DIFFICULTY.values()] == [28, 11, 6, 5]  # LeRobot's DIFFICULTY_TO_TASKS sizes
    assert list(MT50_DIFFICULTY) == ["easy", "medium", "hard", "very hard"]
    for group, suite in GROUP_SUITES.items():  # each group is a suite: metaworld/mt50-very-hard
        assert expand_env_names(f"metaworld/{suite}") == [f"metaworld/{t}" for t in MT50_DIFFICULTY[group]]
    assert difficulty_of("metaworld/stick-pull") == "very hard" and difficulty_of("Push-v3") == "hard"
    with pytest.raises(ValueError, match="expected an MT50 task"):
        difficulty_of("metaworld/fly")


def test_published_rows_and_protocol():
    smol = PUBLISHED_MT50[0]
    # the published average is the mean of the four group rates, not of the 50 tasks
    assert np.mean(list(smol["groups"].values())) == pytest.approx(smol["average"], abs=5e-4)
    pi0 = next(r for r in PUBLISHED_MT50 if r["name"].startswith("pi0"))
    assert np.mean(list(pi0["groups"].values())) == pytest.approx(pi0["average"], abs=5e-4)
    assert PROTOCOL["episodes_per_task"] == 10 and PROTOCOL["max_steps"] == 500 and PROTOCOL["camera"] == "corner2"


def test_group_aggregation_matches_brute_force():
    rng = np.random.default_rng(3)
    counts = {n: int(rng.integers(1, 13)) for n in MT50}  # unequal episodes per task: mean of task means != pooled
    rates = {n: float(rng.random()) for n in MT50}
    res = build_result(_records(MT50, counts.__getitem__, rates.__getitem__), MT50, {}, 1.0)
    table = res.task_groups
    assert table is not None and table["complete"]
    by = {r["task"]: r for r in res.rows}
    group_rates = []
    strata = []
    for row, (group, tasks) in zip(table["groups"], MT50_DIFFICULTY.items()):
        s = [by[f"metaworld/{t}"]["successes"] for t in tasks]
        n = [by[f"metaworld/{t}"]["episodes"] for t in tasks]
        assert row["group"] == group and row["tasks"] == len(tasks)
        assert row["success_rate"] == pytest.approx(np.mean(np.array(s) / np.array(n)))
        assert (row["successes"], row["episodes"]) == (sum(s), sum(n))
        p, k, z = sum(s) / sum(n), sum(n), 1.96  # Wilson over the pooled episodes, written out
        centre = (p + z * z / (2 * k)) / (1 + z * z / k)
        half = z * math.sqrt(p * (1 - p) / k + z * z / (4 * k * k)) / (1 + z * z / k)
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((max(0, centre - half), min(1, centre + half)))
        worst = min(tasks, key=lambda t: (by[f"metaworld/{t}"]["success_rate"], t))
        assert row["weakest"] == f"metaworld/{worst}"
        group_rates.append(row["success_rate"])
        strata.append(list(zip(s, n)))
    assert table["average"]["success_rate"] == pytest.approx(np.mean(group_rates))
    var = sum(sum(((s + 2) / (n + 4)) * (1 - (s + 2) / (n + 4)) / (n + 4) for s, n in st) / len(st) ** 2
              for st in strata) / 16  # fmt: skip
    est = np.mean(group_rates)
    assert (table["average"]["ci_low"], table["average"]["ci_high"]) == pytest.approx(
        (max(0, est - 1.96 * math.sqrt(var)), min(1, est + 1.96 * math.sqrt(var))))
    assert table["all_tasks"]["success_rate"] == pytest.approx(np.mean([by[n]["success_rate"] for n in MT50]))
    assert [p["name"] for p in table["published"]] == [p["name"] for p in PUBLISHED_MT50]


def test_stratified_interval_edges():
    low, high = stratified_interval([[(10, 10)], [(0, 10)]])
    assert 0.0 < low < 0.5 < high < 1.0  # a task at 0 or n successes still has variance
    assert stratified_interval([[(5, 5)]])[1] == 1.0
    with pytest.raises(ValueError, match="successes"):
        stratified_interval([[(3, 2)]])
    with pytest.raises(ValueError, match="rows: expected a row"):
        group_success([], {"groups": {"easy": ["metaworld/reach"]}})


def test_partial_suites():
    assert task_groups_for(expand_env_names("metaworld/mt10")) is None  # no group evaluated whole
    hard = expand_env_names("metaworld/mt50-hard")
    spec = task_groups_for(hard)
    assert list(spec["groups"]) == ["hard"] and not spec["complete"] and spec["published"] == []
    res = build_result(_records(hard, lambda n: 4, lambda n: 0.5), hard, {}, 1.0)
    assert res.task_groups["average"] is None and res.task_groups["all_tasks"] is None
    assert task_groups_for(["babyai/GoToLocal", "babyai/GoToObj"]) is None
    assert task_groups_for(["nosuchfamily/task"]) is None and task_groups_for([]) is None
    assert get_family("babyai/GoToLocal").task_groups(["babyai/GoToLocal"]) is None


def test_eval_json_and_report_hold_the_group_table(tmp_path: Path):
    result = build_result(_records(MT50, lambda n: 10, lambda n: 0.9 if difficulty_of(n) == "easy" else 0.4), MT50,
                          {"env": MT50, "episodes_per_task": 10, "seed_start": 10**9}, 1.0)  # fmt: skip
    run = EvalRun(options=EvalOptions(episodes=10, max_steps=500, gifs=0), checkpoint=tmp_path / "ckpt",
                  out=tmp_path, env="metaworld/mt50", env_kwargs={}, closed_loop=result)  # fmt: skip
    _write(run, cfg=None, policy=None, sim=None, alignment=None, attention=None, gifs=[])
    payload = json.loads((tmp_path / "eval.json").read_text())
    groups = payload["task_groups"]
    assert [g["group"] for g in groups["groups"]] == ["easy", "medium", "hard", "very hard"]
    assert groups["average"]["success_rate"] == pytest.approx(np.mean([g["success_rate"] for g in groups["groups"]]))
    md = (tmp_path / "report.md").read_text()
    section = md[md.index("## Meta-World MT50 difficulty groups"):]
    header = section.splitlines()[4]
    assert header.startswith("| group | tasks | episodes | ours | 95% CI | weakest task | SmolVLA (0.45B)")
    easy = next(line for line in section.splitlines() if line.startswith("| easy |"))
    cells = [c.strip() for c in easy.strip("|").split("|")]
    assert cells[:3] == ["easy", "28", "280"] and cells[6:] == ["82.5", "", "71.8", "", ""]
    assert float(cells[3]) == pytest.approx(100 * groups["groups"][0]["success_rate"], abs=0.05)
    avg = next(line for line in section.splitlines() if line.startswith("| average |"))
    assert [c.strip() for c in avg.strip("|").split("|")][6:] == ["57.3", "68.2", "47.9", "31.6", "10.5"]
    html = (tmp_path / "report.html").read_text()
    assert "Meta-World MT50 difficulty groups" in html and "<td>very hard</td>" in html


def test_mt50_pixels_preset_follows_the_protocol():
    cfg = load_config("metaworld-mt50-pixels")
    assert cfg.data.env == "metaworld/mt50" and cfg.data.image == "rgb"
    assert (cfg.data.camera, cfg.data.proprio) == (PROTOCOL["camera"], PROTOCOL["proprio"])
    assert cfg.eval.episodes == PROTOCOL["episodes_per_task"] and cfg.eval.max_steps == PROTOCOL["max_steps"]
    kwargs = get_family(cfg.data.env).env_kwargs(cfg.data)
    assert kwargs["camera"] == "corner2" and kwargs["proprio"] == "hand"
