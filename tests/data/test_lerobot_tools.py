"""LeRobot v3.0: ``vlafoundry data inspect`` / ``verify`` on the golden datasets and on broken copies, and several
cameras (``observation.images.<name>``) stacked into (K, H, W, 3), both from lerobot's golden and round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
pytest.importorskip("av")

import pyarrow.parquet as pq

from vlafoundry.cli.main import main
from vlafoundry.data import DemoDataset
from vlafoundry.data.lerobot import (
    MAPPING_ENV,
    FeatureMap,
    load_info,
    read_lerobot_episodes,
)
from vlafoundry.data.lerobot_export import export_lerobot
from vlafoundry.data.lerobot_verify import verify_lerobot
from vlafoundry.data.video import encode_video

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "lerobot"
GOLDEN_NAMES = ["state_action", "video", "cameras", "metaworld"]
FRONT, WRIST = "observation.images.front", "observation.images.wrist"


def _copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / name, dst)
    return dst


def _edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _edit_parquet(path: Path, fn) -> None:
    table = pq.read_table(path)
    pq.write_table(fn(table), path)


# ------------------------------------------------------------------------------------------------ verify / inspect
@pytest.mark.parametrize("name", GOLDEN_NAMES)
def test_golden_datasets_verify_clean(name: str, capsys) -> None:
    assert verify_lerobot(FIXTURES / name) == []
    assert main(["data", "verify", str(FIXTURES / name)]) == 0
    assert "OK (LeRobot v3.0 structure" in capsys.readouterr().out


def test_inspect_names_features_cameras_tasks_and_stats(capsys) -> None:
    assert main(["data", "inspect", str(FIXTURES / "cameras")]) == 0
    out = capsys.readouterr().out
    assert "fps         10" in out and "episodes    2 (info.json: 2), frames 7 (info.json: 7)" in out
    assert "[0] look left" in out and "[1] look right" in out
    assert f"cameras     2: {FRONT} (video), {WRIST} (video)" in out
    assert "(camera, video av1)" in out and "stats.json  9/9 features" in out
    assert f"image={FRONT}+{WRIST} (stacked (K, H, W, 3) in this order)" in out
    assert main(["data", "inspect", str(FIXTURES / "metaworld")]) == 0
    out = capsys.readouterr().out
    assert "episodes    6" in out and "frames 335" in out and "cameras     0" in out
    assert "observation.state                float32  [39]" in out and "closed-loop evaluation needs --data.env" in out


def _break_info(root: Path) -> list[str]:
    def fn(info):
        info["codebase_version"] = "v2.1"
        del info["total_tasks"]
        info["features"]["observation.state"]["shape"] = [4, 0]
    _edit_json(root / "meta/info.json", fn)
    return ["codebase_version expected 'v3.0', got 'v2.1'", "missing keys ['total_tasks']",
            "feature 'observation.state' shape expected a list of positive integers, got [4, 0]"]


def _break_lengths(root: Path) -> list[str]:
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    _edit_parquet(path, lambda t: t.set_column(t.column_names.index("length"), "length",
                                                [[5, 5, 6]]))  # episode 1 has 4 frames
    return ["episode 1: length 5 in meta/episodes, 4 rows in data/",
            "lengths sum to 16, meta/info.json total_frames says 15",
            "episode 1: dataset_from_index..dataset_to_index expected 5..10 (length 5"]


def _break_rows(root: Path) -> list[str]:
    path = root / "data/chunk-000/file-000.parquet"
    _edit_parquet(path, lambda t: t.slice(0, t.num_rows - 1))  # the last frame of episode 2 lost
    return ["data/: 14 rows, meta/info.json total_frames says 15", "episode 2: length 6 in meta/episodes, 5 rows"]


def _break_timestamps(root: Path) -> list[str]:
    path = root / "data/chunk-000/file-000.parquet"

    def fn(t):
        ts = t.column("timestamp").to_numpy().copy()
        ts[6] += 0.05  # episode 1, frame 1
        return t.set_column(t.column_names.index("timestamp"), "timestamp", [ts])
    _edit_parquet(path, fn)
    return ["episode 1: timestamp of frame 1 expected 0.1000 s (frame_index / fps), got 0.1500 s"]


def _break_stats(root: Path) -> list[str]:
    def fn(stats):
        stats["observation.state"]["mean"] = [0.0, 0.0, 0.0]
        stats["ghost"] = {"mean": [0.0]}
    _edit_json(root / "meta/stats.json", fn)
    return ["meta/stats.json: observation.state/mean shape expected [4], got [3]",
            "statistics for 'ghost', which is not a feature"]


def _break_tasks(root: Path) -> list[str]:
    _edit_json(root / "meta/info.json", lambda info: info.update(total_tasks=5))
    return ["meta/tasks.parquet: 2 tasks, meta/info.json total_tasks says 5"]


@pytest.mark.parametrize("breaker", [_break_info, _break_lengths, _break_rows, _break_timestamps, _break_stats,
                                     _break_tasks])
def test_verify_names_each_problem_in_a_broken_copy(breaker, tmp_path: Path, capsys) -> None:
    root = _copy(tmp_path, "state_action")
    expected = breaker(root)
    problems = verify_lerobot(root)
    for want in expected:
        assert any(want in p for p in problems), (want, problems)
    assert main(["data", "verify", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"FAIL {problems[0]}" in err and f"{len(problems)} problem(s)" in err


def test_verify_checks_videos(tmp_path: Path) -> None:
    root = _copy(tmp_path, "cameras")
    wrist = root / f"videos/{WRIST}/chunk-000/file-000.mp4"
    wrist.unlink()
    front = root / f"videos/{FRONT}/chunk-000/file-000.mp4"
    frames = np.zeros((6, 64, 64, 3), np.uint8)  # one frame short of the 3 + 4 the episodes need
    encode_video(frames, front, 10)
    problems = verify_lerobot(root)
    assert any(f"videos/{WRIST}/chunk-000/file-000.mp4: missing" in p for p in problems), problems
    assert any(f"videos/{FRONT}/chunk-000/file-000.mp4: episode 1 expected 4 frames in [0.300, 0.700) s, got 3 "
               "(the file holds 6 frames)" in p for p in problems), problems
    wrist.write_bytes(b"not a video" * 100)
    assert any(f"videos/{WRIST}/chunk-000/file-000.mp4: cannot be decoded" in p for p in verify_lerobot(root))
    encode_video(np.zeros((7, 32, 64, 3), np.uint8), front, 10)
    assert any("frames of 32x64, feature 'observation.images.front' says 64x64" in p
               for p in verify_lerobot(root)), verify_lerobot(root)


def test_verify_a_folder_that_is_not_lerobot(tmp_path: Path) -> None:
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text("{not json")
    assert verify_lerobot(tmp_path)[0].startswith("meta/info.json: unreadable")
    assert verify_lerobot(tmp_path / "nothing") == ["meta/info.json: missing (not a LeRobot dataset)"]


# ------------------------------------------------------------------------------------------------ several cameras
def test_golden_two_cameras_stack_in_sorted_order_or_the_chosen_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("lerobot_golden", REPO / "scripts" / "lerobot_golden.py")
    golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(golden)
    eps = read_lerobot_episodes(FIXTURES / "cameras")
    assert [e["image"].shape for e in eps] == [(4, 2, 64, 64, 3), (5, 2, 64, 64, 3)]  # (n + 1, K, H, W, 3)
    for e, ep in enumerate(eps):
        for f in range(len(ep["action"])):
            want = golden.frame_values("cameras", e, f)
            for k, key in enumerate((FRONT, WRIST)):  # sorted names: front, then wrist
                diff = np.abs(ep["image"][f, k].astype(int) - want[key].astype(int))
                assert diff.mean() < 4, (e, f, key, diff.mean())
    swapped = read_lerobot_episodes(FIXTURES / "cameras", FeatureMap(image=f"{WRIST}+{FRONT}"))
    np.testing.assert_array_equal(swapped[1]["image"][:, 0], eps[1]["image"][:, 1])
    one = read_lerobot_episodes(FIXTURES / "cameras", FeatureMap(image=WRIST))
    np.testing.assert_array_equal(one[1]["image"], eps[1]["image"][:, 1])  # one camera: (n + 1, H, W, 3)
    monkeypatch.setenv(MAPPING_ENV, f"image={WRIST}+{WRIST}")
    with pytest.raises(ValueError, match="names a camera twice"):
        load_info(FIXTURES / "cameras")
    monkeypatch.setenv(MAPPING_ENV, f"image={FRONT}+observation.state")
    with pytest.raises(ValueError, match=r"only camera features .* can be stacked, got \[\('observation.state'"):
        load_info(FIXTURES / "cameras")


def test_cameras_of_different_shapes_are_refused_naming_them(tmp_path: Path) -> None:
    root = _copy(tmp_path, "cameras")
    _edit_json(root / "meta/info.json", lambda info: info["features"][WRIST].update(shape=[32, 64, 3]))
    with pytest.raises(ValueError, match=r"differ in shape .*\[64, 64, 3\].*\[32, 64, 3\]"):
        load_info(root)
    assert load_info(root, FeatureMap(image=FRONT)).mapping.cameras == (FRONT,)


def two_camera_episodes() -> list[dict]:
    rng = np.random.default_rng(0)
    eps = []
    for e, n in enumerate([5, 7]):
        t = np.arange(n + 1)[:, None, None]
        img = np.zeros((n + 1, 2, 32, 32, 3), np.uint8)  # (n + 1, K, H, W, 3)
        img[:, 0, :, :, 0] = 20 * t + 10 * e
        img[:, 1, :, :, 2] = 200 - 10 * t
        img[:, 1, :16, :, 1] = 90
        eps.append({"seed": 100 + e, "task": "metaworld/reach", "instruction": f"camera test {e}", "image": img,
                    "state": rng.normal(size=(n + 1, 39)).astype(np.float32),
                    "action": rng.uniform(-1, 1, size=(n, 4)).astype(np.float32),
                    "reward": np.zeros(n, np.float32), "terminated": np.arange(n) == n - 1,
                    "truncated": np.zeros(n, bool)})
    return eps


REACH_ENV = {"name": "metaworld/reach", "family": "metaworld", "tasks": ["metaworld/reach"],
             "spec": {"name": "metaworld/reach", "action_type": "continuous", "num_actions": None, "action_dim": 4,
                      "action_low": [-1.0] * 4, "action_high": [1.0] * 4, "state_dim": 39, "image_shape": None,
                      "max_episode_steps": 300}}


def test_two_camera_round_trip_writes_one_video_per_camera(tmp_path: Path, capsys) -> None:
    eps = two_camera_episodes()
    env = REACH_ENV
    out = tmp_path / "two"
    info = export_lerobot(eps, out, env=env, image_mode="rgb", camera_keys=[WRIST, FRONT])  # not sorted order
    assert [k for k, f in info["features"].items() if f["dtype"] == "video"] == [WRIST, FRONT]
    for key in (WRIST, FRONT):
        assert (out / f"videos/{key}/chunk-000/file-000.mp4").is_file()
        assert info["features"][key]["shape"] == [32, 32, 3]
    stats = json.loads((out / "meta/stats.json").read_text())
    assert np.shape(stats[WRIST]["mean"]) == (3, 1, 1)
    assert verify_lerobot(out) == []
    back = read_lerobot_episodes(out)  # vlafoundry.json keeps the stacking order
    assert len(back) == 2
    for a, b in zip(eps, back):
        n = len(a["action"])
        assert b["image"].shape == a["image"].shape
        assert np.abs(b["image"][:n].astype(int) - a["image"][:n].astype(int)).max() <= 2  # H.264 crf 0, 4:4:4
        np.testing.assert_array_equal(b["state"][:n], a["state"][:n])
        np.testing.assert_array_equal(b["action"], a["action"])
        assert (b["instruction"], b["task"], b["seed"]) == (a["instruction"], a["task"], a["seed"])
    ds = DemoDataset(out, split="all", history=2, chunk=1)
    assert ds.image_shape == (2, 32, 32, 3) and ds.spec.image_shape == (2, 32, 32, 3)
    batch = ds.__getitems__([0, 1, 6])
    assert tuple(batch["image"].shape) == (3, 2, 2, 32, 32, 3)  # (B, T, K, H, W, 3)
    np.testing.assert_array_equal(batch["image"][2, 1], back[1]["image"][1])  # episode 1, frame 1: both cameras
    # re-exported (a LeRobot source): the camera names and their order are kept
    from vlafoundry.data.lerobot_export import export_dataset_lerobot

    info, _ = export_dataset_lerobot(out, tmp_path / "again")
    assert [k for k, f in info["features"].items() if f["dtype"] == "video"] == [WRIST, FRONT]
    again = read_lerobot_episodes(tmp_path / "again")
    assert np.abs(again[1]["image"].astype(int) - back[1]["image"].astype(int)).max() <= 2
    # the default names for K cameras, and a wrong count named
    info = export_lerobot(eps, tmp_path / "default", env=env, image_mode="rgb")
    assert [k for k, f in info["features"].items() if f["dtype"] == "video"] == [
        "observation.images.cam0", "observation.images.cam1"]
    with pytest.raises(ValueError, match=r"camera_keys: expected 2 distinct names .* got \['a'\]"):
        export_lerobot(eps, tmp_path / "bad", env=env, image_mode="rgb", camera_keys=["a"])


def test_two_camera_golden_trains_a_patch_policy_from_the_cli(tmp_path: Path) -> None:
    """lerobot's 2-camera dataset -> (K, H, W, 3) frames -> VisionEncoder with K token groups, through the CLI."""
    data = _copy(tmp_path, "cameras")
    run = tmp_path / "run"
    assert main(["train", "--preset", "metaworld-mt10", "--data", str(data), "--out", str(run),
                 "--model.vision", "patch", "--model.patch_size", "16", "--model.d_model", "32", "--model.d_ff", "64",
                 "--model.num_heads", "2", "--model.num_layers", "1", "--model.text_layers", "1",
                 "--model.vision_layers", "1", "--train.steps", "2", "--train.batch_size", "4",
                 "--train.warmup_steps", "1", "--train.eval_every", "2", "--train.checkpoint_every", "2",
                 "--train.progress", "false", "--train.threads", "1", "--data.val_fraction", "0"]) == 0
    from vlafoundry.train.trainer import load_run

    policy, _, _ = load_run(run)
    assert policy.vision_encoder.num_cameras == 2
