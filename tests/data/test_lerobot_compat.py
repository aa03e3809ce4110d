"""Our LeRobot export read by real lerobot 0.6.1 (``LeRobotDataset(repo_id, root=..., video_backend="pyav")``).

lerobot needs Python >= 3.12 and torch < 2.12, so it runs in its own venv (docs/interop.md says how to build it):
``VLAFOUNDRY_LEROBOT_PYTHON=/path/to/venv/bin/python``, or the venv at /work/venv-lerobot. Skipped without one.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from vlafoundry.data.lerobot_export import export_dataset_lerobot
from vlafoundry.data.source import iterate_source_episodes, resolve_source

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = Path("/work/venv-lerobot/bin/python")


def _lerobot_python() -> str:
    py = os.environ.get("VLAFOUNDRY_LEROBOT_PYTHON") or (str(DEFAULT_VENV) if DEFAULT_VENV.exists() else "")
    if not py:
        pytest.skip("no lerobot venv: set VLAFOUNDRY_LEROBOT_PYTHON to a Python 3.12 with lerobot==0.6.1 "
                    "(docs/interop.md, 'Compatibility check')")
    if not Path(py).exists():
        pytest.skip(f"VLAFOUNDRY_LEROBOT_PYTHON={py}: no such file")
    probe = subprocess.run([py, "-c", "import lerobot.datasets.lerobot_dataset"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"{py} cannot import lerobot.datasets: {probe.stderr.strip().splitlines()[-1:]}")
    return py


def _read_with_lerobot(py: str, root: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH="")
    res = subprocess.run([py, str(REPO / "scripts" / "lerobot_golden.py"), "read", str(root)], capture_output=True,
                         text=True, env=env, timeout=600, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("image", ["symbolic", "rgb"])
def test_lerobot_reads_our_export(image: str, tmp_path: Path) -> None:
    py = _lerobot_python()
    from vlafoundry.data import generate_dataset

    root = tmp_path / "src"
    generate_dataset("babyai/GoToLocal", 3, root, workers=1, seed=0, image=image, progress=False)
    out = tmp_path / "lr"
    export_dataset_lerobot(root, out)
    got = _read_with_lerobot(py, out)
    eps = list(iterate_source_episodes(resolve_source(root)))
    steps = [(ep, t) for ep in eps for t in range(len(ep["action"]))]
    assert got["lerobot_version"] == "0.6.1"
    assert got["num_episodes"] == 3 and got["num_frames"] == len(steps) and got["fps"] == 10
    assert got["task"] == [ep["instruction"] for ep, _ in steps]
    np.testing.assert_allclose(got["state"], [ep["state"][t] for ep, t in steps], rtol=1e-6)
    assert got["action"] == [[int(ep["action"][t])] for ep, t in steps]
    if image == "rgb":
        assert got["camera_keys"] == ["observation.images.rgb"]
        assert got["image_shape"]["observation.images.rgb"] == [3, 56, 56]  # CHW float in [0, 1]
        want = [ep["image"][t].mean() / 255.0 for ep, t in steps]
        np.testing.assert_allclose(got["image_mean"]["observation.images.rgb"], want, atol=2 / 255)
    else:
        assert got["camera_keys"] == [] and "observation.grid" in got["features"]
    assert "observation.state" in got["stats_keys"] and "action" in got["stats_keys"]


def test_lerobot_reads_our_two_camera_export(tmp_path: Path) -> None:
    """Two cameras (frames (K, H, W, 3)) become two video features, both read by lerobot in the recorded order."""
    py = _lerobot_python()
    from test_lerobot_tools import (  # tests/data is on sys.path
        FRONT,
        REACH_ENV,
        WRIST,
        two_camera_episodes,
    )

    from vlafoundry.data.lerobot_export import export_lerobot

    eps = two_camera_episodes()
    out = tmp_path / "two"
    export_lerobot(eps, out, env=REACH_ENV, image_mode="rgb", camera_keys=[WRIST, FRONT])
    got = _read_with_lerobot(py, out)
    steps = [(ep, t) for ep in eps for t in range(len(ep["action"]))]
    assert sorted(got["camera_keys"]) == [FRONT, WRIST] and got["num_frames"] == len(steps)
    for k, key in enumerate((WRIST, FRONT)):
        assert got["image_shape"][key] == [3, 32, 32]
        want = [ep["image"][t, k].mean() / 255.0 for ep, t in steps]
        np.testing.assert_allclose(got["image_mean"][key], want, atol=2 / 255)
    np.testing.assert_allclose(got["state"], [ep["state"][t] for ep, t in steps], rtol=1e-6)
    assert got["task"] == [ep["instruction"] for ep, _ in steps]


def test_lerobots_metaworld_rollouts_exported_again_are_read_by_lerobot(tmp_path: Path) -> None:
    """lerobot -> vlafoundry -> lerobot on the real Meta-World rollouts (a foreign dataset: the env named)."""
    py = _lerobot_python()
    import shutil

    src = tmp_path / "metaworld"
    shutil.copytree(REPO / "tests/fixtures/lerobot/metaworld", src)
    out = tmp_path / "again"
    export_dataset_lerobot(src, out, env_name="metaworld/reach")
    got = _read_with_lerobot(py, out)
    z = np.load(REPO / "tests/fixtures/lerobot/metaworld_rollouts.npz")
    assert got["num_episodes"] == 6 and got["num_frames"] == int(z["length"].sum())
    np.testing.assert_array_equal(np.asarray(got["state"], np.float32), z["state"])
    np.testing.assert_array_equal(np.asarray(got["action"], np.float32), z["action"])
    assert got["task"] == [str(t) for t, n in zip(z["instruction"], z["length"]) for _ in range(int(n))]
