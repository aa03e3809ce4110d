"""bench/metaworld_camera.py end to end on real (tiny) Meta-World data: generate -> [pretrain] -> train -> eval per
cell through the CLI, the table and cells.json, and resumption (finished stages are not run again)."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def bench(load_bench):
    return load_bench("metaworld_camera.py")


def test_state_cells_run_end_to_end_and_resume(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["--demos", "1", "--obs", "state", "--steps", "2", "--episodes", "1", "--max-steps", "5",
            "--data-root", "d", "--runs", "r", "--out", "o", "--pretrain.steps", "2", "--train.eval_every", "1"]
    assert bench.main(argv) == 0
    cells = json.loads((tmp_path / "o" / "cells.json").read_text())
    assert [(c["obs"], c["pretrain"], c["demos_per_task"]) for c in cells] == [("state", "none", 1), ("state", "vl", 1)]
    none, vl = cells
    assert none["episodes_in_dataset"] == 10 and none["episodes"] == 10 and len(none["per_task"]) == 10
    assert none["train_steps"] == 2 and none["val_action_l1"] is not None
    assert none["train_wall_s"] > 0 and none["eval_wall_s"] > 0 and none["pretrain_wall_s"] is None
    assert vl["pretrain_wall_s"] > 0
    assert set(none["costs"]) == {"generate", "train", "eval"} and set(vl["costs"]) == {"pretrain", "train", "eval"}
    assert (tmp_path / "r" / "state-vl-n1" / "pretrain" / "summary.json").exists()
    log = (tmp_path / "r" / "commands.log").read_text()
    assert "--init-from r/state-vl-n1/pretrain" in log and "--train.restarts []" in log
    table = (tmp_path / "o" / "table.md").read_text()
    assert "| state | vl | 1 (10) | 0.0% [0.0, 27.8] (10) |" in table

    # a rerun trains nothing; a new evaluation protocol reruns only the evaluations
    calls: list[list[str]] = []
    monkeypatch.setattr(bench, "run_cli", lambda cmd, log: calls.append(cmd) or {"wall_s": 0.0, "cpu_s": 0.0})
    assert bench.main(argv) == 0 and calls == []
    again = json.loads((tmp_path / "o" / "cells.json").read_text())
    assert again[0]["costs"] == none["costs"]  # costs measured when the cell ran are kept
    assert argv[6:8] == ["--episodes", "1"]
    assert bench.main([*argv[:7], "2", *argv[8:]]) == 0
    assert [c[0] for c in calls] == ["eval", "eval"]


def test_bad_arguments_are_refused_by_name(bench, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--obs", "depth"])
    assert "--obs: expected a comma list of state, pixels; got depth" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.parse_args(["--stepz", "3"])
    assert "unrecognized arguments: --stepz" in capsys.readouterr().err
