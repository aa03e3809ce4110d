"""LeRobot compatibility, both ways; runs in a Python 3.12 venv with ``lerobot==0.6.1`` (see docs/interop.md).

    python scripts/lerobot_golden.py make OUT_DIR      # golden datasets written by LeRobotDataset.create/add_frame/...
    python scripts/lerobot_golden.py read ROOT         # read ROOT with LeRobotDataset(...): a JSON summary on stdout

``make`` writes ``state_action`` (4-D float state, 2-D float action, 3 episodes, 2 tasks) and ``video`` (a 64x64 (SVT-AV1 crashes with SIGFPE on 16x16)
camera as AV1 video, 3-D state, discrete int64 action, 2 episodes) with the values given by :func:`frame_values`,
which ``tests/data/test_lerobot_compat.py`` recomputes. Offline: no hub access (``root`` is a local folder).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GOLDEN = {
    "state_action": {"lengths": [5, 4, 6], "tasks": ["push the block", "open the drawer", "push the block"],
                     "video": False},
    "video": {"lengths": [3, 4], "tasks": ["go to the red ball", "pick up the key"], "video": True},
}


def frame_values(name: str, episode: int, frame: int) -> dict[str, np.ndarray]:
    """The values of one golden frame (a deterministic function of the dataset, episode and frame)."""
    base = 10.0 * episode + frame
    if name == "state_action":
        return {"observation.state": np.asarray([base, -base, 0.5 * base, 1.0], np.float32),
                "action": np.asarray([0.1 * base, -0.2 * frame], np.float32)}
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, :, 0] = 40 + 40 * frame  # flat colours survive lossy video coding within a few levels
    img[:, :, 1] = 200 - 50 * episode
    img[:32, :, 2] = 120
    return {"observation.state": np.asarray([base, frame, episode], np.float32),
            "action": np.asarray([(episode + frame) % 7], np.int64), "observation.images.cam": img}


def features(name: str) -> dict[str, dict]:
    if name == "state_action":
        return {"observation.state": {"dtype": "float32", "shape": (4,), "names": ["x", "y", "z", "w"]},
                "action": {"dtype": "float32", "shape": (2,), "names": ["dx", "dy"]}}
    return {"observation.state": {"dtype": "float32", "shape": (3,), "names": ["a", "b", "c"]},
            "action": {"dtype": "int64", "shape": (1,), "names": ["action"]},
            "observation.images.cam": {"dtype": "video", "shape": (64, 64, 3), "names": ["height", "width", "channels"]}}


def make(out: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    for name, spec in GOLDEN.items():
        root = out / name
        shutil.rmtree(root, ignore_errors=True)
        ds = LeRobotDataset.create(repo_id=f"vlafoundry/golden_{name}", fps=10, root=root, features=features(name),
                                   use_videos=spec["video"])
        for e, (n, task) in enumerate(zip(spec["lengths"], spec["tasks"])):
            for f in range(n):
                ds.add_frame({**frame_values(name, e, f), "task": task})
            ds.save_episode()
        ds.finalize()
        print(f"wrote {root}")


def read(root: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/check", root=root, video_backend="pyav")
    items = [ds[i] for i in range(len(ds))]
    summary = {
        "lerobot_version": __import__("importlib.metadata").metadata.version("lerobot"),
        "num_frames": ds.num_frames, "num_episodes": ds.num_episodes, "fps": ds.fps,
        "features": sorted(ds.features),
        "camera_keys": list(ds.meta.camera_keys),
        "task": [it["task"] for it in items],
        "episode_index": [int(it["episode_index"]) for it in items],
        "state": [it["observation.state"].tolist() for it in items],
        "action": [it["action"].reshape(-1).tolist() for it in items],
        "image_shape": {k: list(items[0][k].shape) for k in ds.meta.camera_keys},
        "image_mean": {k: [float(it[k].float().mean()) for it in items] for k in ds.meta.camera_keys},
        "stats_keys": sorted(ds.meta.stats) if ds.meta.stats else [],
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "read"):
        sys.exit(__doc__)
    (make if sys.argv[1] == "make" else read)(Path(sys.argv[2]))
