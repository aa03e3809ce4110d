"""A LeRobot dataset written by lerobot 0.6.1 from real Meta-World expert rollouts (``tests/fixtures/lerobot/
metaworld``, made by ``scripts/lerobot_golden.py``): read back exactly, then trained on and evaluated in closed loop
from the command line (``vlafoundry train --data FIXTURE --data.env metaworld/reach`` then ``vlafoundry eval``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("metaworld")

from vlafoundry.cli.main import main
from vlafoundry.data.lerobot import read_lerobot_episodes

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "lerobot"
TINY = ["--model.d_model", "32", "--model.d_ff", "64", "--model.num_heads", "2", "--model.num_layers", "1",
        "--model.text_layers", "1", "--train.batch_size", "32", "--train.warmup_steps", "2",
        "--train.eval_every", "4", "--train.checkpoint_every", "4", "--train.progress", "false",
        "--train.threads", "1", "--eval.episodes", "1", "--eval.max_steps", "20", "--eval.workers", "0"]


def test_metaworld_golden_holds_the_rollouts_lerobot_was_given() -> None:
    z = np.load(FIXTURES / "metaworld_rollouts.npz")
    eps = read_lerobot_episodes(FIXTURES / "metaworld")
    assert [len(e["action"]) for e in eps] == z["length"].tolist()
    assert [e["instruction"] for e in eps] == z["instruction"].tolist()
    assert len(set(z["env"].tolist())) == 2  # reach and push
    start = 0
    for ep, n in zip(eps, z["length"]):
        sl = slice(start, start + int(n))
        np.testing.assert_array_equal(ep["state"][:n], z["state"][sl])  # float32, exactly
        np.testing.assert_array_equal(ep["action"], z["action"][sl])
        np.testing.assert_array_equal(ep["reward"], z["reward"][sl])
        np.testing.assert_array_equal(ep["terminated"], z["done"][sl])
        assert ep["state"].shape[1] == 39 and ep["action"].shape[1] == 4 and ep["image"] is None
        start += int(n)


def test_metaworld_golden_trains_and_evaluates_closed_loop_from_the_cli(tmp_path: Path, capsys) -> None:
    data = tmp_path / "metaworld"
    shutil.copytree(FIXTURES / "metaworld", data)  # the training cache is kept beside the data
    run = tmp_path / "run"
    assert main(["train", "--preset", "metaworld-mt10", "--data", str(data), "--data.env", "metaworld/reach",
                 "--out", str(run), "--train.steps", "4", *TINY]) == 0
    cfg = (run / "config.yaml").read_text()
    assert "env: metaworld/reach" in cfg and str(data) in cfg
    assert any(p.name.startswith("step_") for p in (run / "checkpoints").iterdir())
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["eval", str(run), "--episodes", "2", "--max-steps", "20", "--workers", "0", "--gifs", "0",
                 "--no-offline", "--out", str(out)]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert res["config"]["env"] == ["metaworld/reach"]
    assert [e["task"] for e in res["episodes"]] == ["metaworld/reach"] * 2
    assert all(1 <= e["length"] <= 20 for e in res["episodes"])
    assert "metaworld/reach" in capsys.readouterr().out


def test_metaworld_golden_checked_against_the_named_env(tmp_path: Path) -> None:
    from vlafoundry.data import DemoDataset

    data = tmp_path / "metaworld"
    shutil.copytree(FIXTURES / "metaworld", data)
    ds = DemoDataset(data, split="all", env_name="metaworld/reach")
    assert ds.env_name == "metaworld/reach" and ds.spec.state_dim == 39 and ds.spec.action_dim == 4
    assert len(ds) == 335 and len(ds.instructions) == 4
    with pytest.raises(ValueError, match=r"env babyai/GoToLocal has \(state dim, action type, action dim\) .* "
                                         r"the dataset's features give \(39, 'continuous', 4\)"):
        DemoDataset(data, split="all", env_name="babyai/GoToLocal", cache_dir=tmp_path / "c")


def test_a_wrong_data_env_on_a_foreign_dataset_is_refused_before_training(tmp_path: Path, capsys) -> None:
    """``vlafoundry train --data FOREIGN --data.env ENV``: the env is checked against the data's features when the
    config is read (state dim, action type and width named), so nothing is trained or written."""
    data = tmp_path / "metaworld"
    shutil.copytree(FIXTURES / "metaworld", data)
    run = tmp_path / "run"
    assert main(["train", "--preset", "metaworld-mt10", "--data", str(data), "--data.env", "babyai/GoToLocal",
                 "--out", str(run), "--train.steps", "4", *TINY]) == 2
    err = capsys.readouterr().err
    assert "data.env:" in err and "the dataset's features give (39, 'continuous', 4)" in err, err
    assert not run.exists()
