"""LeRobot compatibility, both ways; runs in a Python 3.12 venv with ``lerobot==0.6.1`` (see docs/interop.md).

    python3 scripts/lerobot_golden.py rollout OUT.npz  # [project python] Meta-World expert rollouts -> .npz
    python scripts/lerobot_golden.py make OUT_DIR      # golden datasets written by LeRobotDataset.create/add_frame/...
    python scripts/lerobot_golden.py read ROOT         # read ROOT with LeRobotDataset(...): a JSON summary on stdout

``make`` writes ``state_action`` (4-D float state, 2-D float action, 3 episodes, 2 tasks) and ``video`` (a 64x64 (SVT-AV1 crashes with SIGFPE on 16x16)
camera as AV1 video, 3-D state, discrete int64 action, 2 episodes) with the values given by :func:`frame_values`,
which ``tests/data/test_lerobot_compat.py`` recomputes, and ``cameras`` (two 64x64 AV1 cameras, ``front`` and
``wrist``, 2-D state and action, 2 episodes). With ``OUT_DIR/metaworld_rollouts.npz`` present (``rollout``: the
scripted Meta-World expert on ``metaworld/reach`` and ``metaworld/push``, run with the project's Python 3.11, since
the lerobot venv has no Meta-World) it also writes ``metaworld``: those real rollouts (39-D state, 4-D action,
reward, done, the instruction as the task). Offline: no hub access (``root`` is a local folder).
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
    "cameras": {"lengths": [3, 4], "tasks": ["look left", "look right"], "video": True},
}
CAMERAS = ("observation.images.front", "observation.images.wrist")
ROLLOUTS = "metaworld_rollouts.npz"
#: the Meta-World rollouts: env name -> seeds (short episodes of the scripted expert, 41-68 steps)
ROLLOUT_SEEDS = {"metaworld/reach": [0, 1, 2], "metaworld/push": [0, 1, 2]}


def frame_values(name: str, episode: int, frame: int) -> dict[str, np.ndarray]:
    """The values of one golden frame (a deterministic function of the dataset, episode and frame)."""
    base = 10.0 * episode + frame
    if name == "state_action":
        return {"observation.state": np.asarray([base, -base, 0.5 * base, 1.0], np.float32),
                "action": np.asarray([0.1 * base, -0.2 * frame], np.float32)}
    if name == "cameras":  # each camera its own flat colour, so the stacking order is visible
        front = np.zeros((64, 64, 3), np.uint8)
        front[:, :, 0] = 40 + 40 * frame
        front[:, :, 1] = 60 + 100 * episode
        wrist = np.zeros((64, 64, 3), np.uint8)
        wrist[:, :, 2] = 220 - 40 * frame
        wrist[:, :, 1] = 30
        return {"observation.state": np.asarray([base, -frame], np.float32),
                "action": np.asarray([0.5 * frame, episode], np.float32),
                CAMERAS[0]: front, CAMERAS[1]: wrist}
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
    if name == "cameras":
        cam = {"dtype": "video", "shape": (64, 64, 3), "names": ["height", "width", "channels"]}
        return {"observation.state": {"dtype": "float32", "shape": (2,), "names": ["p", "q"]},
                "action": {"dtype": "float32", "shape": (2,), "names": ["u", "v"]}, CAMERAS[0]: cam, CAMERAS[1]: cam}
    if name == "metaworld":
        return {"observation.state": {"dtype": "float32", "shape": (39,), "names": [f"s{i}" for i in range(39)]},
                "action": {"dtype": "float32", "shape": (4,), "names": ["dx", "dy", "dz", "grip"]},
                "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
                "next.done": {"dtype": "bool", "shape": (1,), "names": None}}
    return {"observation.state": {"dtype": "float32", "shape": (3,), "names": ["a", "b", "c"]},
            "action": {"dtype": "int64", "shape": (1,), "names": ["action"]},
            "observation.images.cam": {"dtype": "video", "shape": (64, 64, 3), "names": ["height", "width", "channels"]}}


def rollout(path: Path) -> None:
    """Roll the scripted Meta-World expert out (needs vlafoundry and metaworld: the project's Python 3.11) and save
    the episodes, back to back, to ``path``: state (N, 39), action (N, 4), reward (N,), done (N,) per frame; per
    episode its length, env, seed and instruction."""
    from vlafoundry.data.rollout import run_expert_episode
    from vlafoundry.envs import make_env

    cols: dict[str, list] = {k: [] for k in ("state", "action", "reward", "done", "length", "env", "seed", "instruction")}
    for name, seeds in ROLLOUT_SEEDS.items():
        env = make_env(name)
        for seed in seeds:
            ep, reason = run_expert_episode(env, seed)
            if ep is None:
                raise RuntimeError(f"{name} seed {seed}: the expert failed ({reason})")
            n = len(ep["action"])
            done = np.asarray(ep["terminated"], bool) | np.asarray(ep["truncated"], bool)
            done[-1] = True
            cols["state"].append(np.asarray(ep["state"][:n], np.float32))
            cols["action"].append(np.asarray(ep["action"], np.float32))
            cols["reward"].append(np.asarray(ep["reward"], np.float32))
            cols["done"].append(done)
            cols["length"].append(n)
            cols["env"].append(name)
            cols["seed"].append(seed)
            cols["instruction"].append(ep["instruction"])
        env.close()
    arrays = {k: np.concatenate(v) for k, v in cols.items() if k in ("state", "action", "reward", "done")}
    np.savez_compressed(path, **arrays, length=np.asarray(cols["length"], np.int64), env=np.asarray(cols["env"]),
                        seed=np.asarray(cols["seed"], np.int64), instruction=np.asarray(cols["instruction"]))
    print(f"wrote {path}: {len(cols['length'])} episodes, {len(arrays['action'])} frames")


def rollout_frames(path: Path) -> list[tuple[str, list[dict[str, np.ndarray]]]]:
    """The saved rollouts as (task text, frames) per episode, frames as ``add_frame`` takes them."""
    z = np.load(path)
    out, start = [], 0
    for n, text in zip(z["length"], z["instruction"]):
        sl = slice(start, start + int(n))
        out.append((str(text), [{"observation.state": s, "action": a, "next.reward": np.asarray([r], np.float32),
                                 "next.done": np.asarray([d], bool)}
                                for s, a, r, d in zip(z["state"][sl], z["action"][sl], z["reward"][sl], z["done"][sl])]))
        start += int(n)
    return out


def make(out: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if (out / ROLLOUTS).is_file():
        root = out / "metaworld"
        shutil.rmtree(root, ignore_errors=True)
        ds = LeRobotDataset.create(repo_id="vlafoundry/golden_metaworld", fps=10, root=root,
                                   features=features("metaworld"), use_videos=False)
        for task, frames in rollout_frames(out / ROLLOUTS):
            for frame in frames:
                ds.add_frame({**frame, "task": task})
            ds.save_episode()
        ds.finalize()
        print(f"wrote {root}")
    else:
        print(f"no {out / ROLLOUTS}: metaworld skipped (make it with the project's python: rollout {out / ROLLOUTS})")
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
    if len(sys.argv) != 3 or sys.argv[1] not in ("make", "read", "rollout"):
        sys.exit(__doc__)
    {"make": make, "read": read, "rollout": rollout}[sys.argv[1]](Path(sys.argv[2]))
