"""bench/compare_evals.py: two eval.json of the same episodes compared pair by pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _write(path: Path, successes: list[bool], instructions: list[str]) -> Path:
    eps = [{"env": "babyai/BossLevel", "seed": 10**9 + i, "instruction": ins, "success": ok, "length": 10 if ok else 64}
           for i, (ok, ins) in enumerate(zip(successes, instructions))]
    path.write_text(json.dumps({"episodes": eps}))
    return path


def test_compare_counts_discordant_pairs_and_composed_instructions(load_bench, tmp_path: Path) -> None:
    cmp = load_bench("compare_evals.py")
    ins = ["go to the red ball", "open a door and pick up the key", "go to a box, then open the door",
           "pick up a ball after you open the red door", "put the key next to the ball"]
    a = _write(tmp_path / "a.json", [True, True, False, False, True], ins)
    b = _write(tmp_path / "b.json", [True, False, True, True, False], ins)
    assert cmp.main([str(a), str(b), "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert (r["only_a"], r["only_b"]) == (2, 2) and r["mcnemar_p"] == 1.0
    assert r["a"]["single"] == {"episodes": 2, "successes": 2}  # "put ... next to ..." is one instruction
    assert r["a"]["composed"] == {"episodes": 3, "successes": 1}  # and / , then / after you
    assert r["b"]["successes"] == 3 and r["b"]["mean_length_success"] == 10 and r["b"]["shortest_failure"] == 64


def test_compare_refuses_different_episodes(load_bench, tmp_path: Path) -> None:
    cmp = load_bench("compare_evals.py")
    a = _write(tmp_path / "a.json", [True, False], ["go to the ball"] * 2)
    b = _write(tmp_path / "b.json", [True], ["go to the ball"])
    with pytest.raises(SystemExit, match="different episodes"):
        cmp.main([str(a), str(b)])
    (tmp_path / "empty.json").write_text("{}")
    with pytest.raises(SystemExit, match="found none"):
        cmp.main([str(tmp_path / "empty.json"), str(b)])
