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
