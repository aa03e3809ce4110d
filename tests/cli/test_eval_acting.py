"""``vlafoundry eval`` acting-time options: a generative head's sampling steps, chunk execution and temporal
ensembling set for one evaluation (without retraining), checked against the checkpoint, recorded in eval.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlafoundry.cli.main import main

TINY = ["--model.d_model", "32", "--model.d_ff", "64", "--model.num_layers", "1", "--model.gen_hidden", "32",
        "--model.gen_layers", "1", "--train.steps", "2", "--train.batch_size", "8", "--train.warmup_steps", "1",
        "--train.eval_every", "2", "--train.checkpoint_every", "2", "--train.threads", "1", "--train.progress", "false"]
EVAL = ["--episodes", "3", "--workers", "0", "--no-offline", "--gifs", "0"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from vlafoundry.data.generate import generate_dataset

    root = tmp_path_factory.mktemp("eval_acting")
    generate_dataset("point/detour", 12, root / "data", workers=1, seed=0, progress=False)
    out = {}
    for head in ("flow", "continuous"):
        rc = main(["train", "--preset", "bench/heads_detour.yaml", "--out", str(root / head), "--data.path",
                   str(root / "data"), "--data.episodes", "12", "--model.head", head, *TINY])
        assert rc == 0
        out[head] = root / head
    return out


def test_eval_sets_sampling_steps_and_chunk_execution_and_records_them(runs, tmp_path):
    rc = main(["eval", str(runs["flow"]), *EVAL, "--flow-steps", "2", "--execute", "1", "--ensemble",
               "--out", str(tmp_path / "a")])
    assert rc == 0
    acting = json.loads((tmp_path / "a" / "eval.json").read_text())["acting"]
    assert acting["flow_steps"] == 2 and acting["execute"] == 1 and acting["ensemble"] is True
    assert acting["diffusion_steps"] == 10  # untouched: the checkpoint's
    rc = main(["eval", str(runs["flow"]), *EVAL, "--out", str(tmp_path / "b")])  # defaults: the checkpoint's
    acting = json.loads((tmp_path / "b" / "eval.json").read_text())["acting"]
    assert rc == 0 and acting["flow_steps"] == 10 and acting["execute"] == 4 and acting["ensemble"] is False


def test_eval_refuses_acting_options_the_checkpoint_cannot_use(runs, tmp_path, capsys):
    assert main(["eval", str(runs["continuous"]), *EVAL, "--flow-steps", "2", "--out", str(tmp_path / "c")]) == 2
    assert "--flow-steps: only for a policy with model.head 'flow'; this checkpoint's head is 'continuous'" in \
        capsys.readouterr().err
    assert main(["eval", str(runs["flow"]), *EVAL, "--execute", "9", "--out", str(tmp_path / "d")]) == 2
    assert "--execute: expected an integer in [0, model.chunk=8], got 9" in capsys.readouterr().err
    assert main(["eval", str(runs["flow"]), *EVAL, "--diffusion-steps", "0", "--out", str(tmp_path / "e")]) == 2
    assert "--diffusion-steps: expected an integer >= 1 or None, got 0" in capsys.readouterr().err
    assert main(["eval", str(runs["flow"]), *EVAL, "--instruction-snap", "--out", str(tmp_path / "f")]) == 2
    assert "--instruction-snap: only for a policy with model.language 'pretrained'; this checkpoint's is 'none'" in \
        capsys.readouterr().err
    assert not (tmp_path / "c").exists() or not (tmp_path / "c" / "eval.json").exists()


def test_report_plots_closed_loop_trajectories_replayed_from_the_episodes(runs, tmp_path):
    """point/detour has a 2-D position: the report shows each episode's path, replayed from its seed and actions,
    and the replayed path ends where the recorded episode did (same length)."""
    from vlafoundry.eval.rollout import replay_positions

    out = tmp_path / "r"
    assert main(["eval", str(runs["flow"]), "--episodes", "3", "--workers", "0", "--no-offline", "--gifs", "1",
                 "--out", str(out)]) == 0
    assert (out / "report_assets" / "trajectories.png").stat().st_size > 0
    assert "Closed-loop trajectories" in (out / "report.md").read_text()
    # the replay visits the states the env visits under the same seed and actions
    import numpy as np

    from vlafoundry.envs import make_env

    env, rng = make_env("point/detour"), np.random.default_rng(0)
    states = [env.reset(seed=7)["state"][:2]]
    actions = [rng.uniform(-1, 1, 2).astype(np.float32) for _ in range(6)]
    for a in actions:
        states.append(env.step(a)[0]["state"][:2])
    path = replay_positions({"env": "point/detour", "seed": 7, "actions": [a.tolist() for a in actions]})
    np.testing.assert_allclose(path, np.stack(states), atol=1e-6)
    assert replay_positions({"env": "babyai/GoToLocal", "seed": 0, "actions": [2]}) is None  # no 2-D position
    assert main(["eval", str(runs["flow"]), *EVAL, "--out", str(tmp_path / "q")]) == 0  # --gifs 0: no replay
    assert not (tmp_path / "q" / "report_assets" / "trajectories.png").exists()
