"""LeRobot v3.0 datasets: golden datasets written by lerobot 0.6.1 read back, and vlafoundry -> LeRobot -> vlafoundry."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from vlafoundry.data import DemoDataset
from vlafoundry.data.lerobot import (
    MAPPING_ENV,
    FeatureMap,
    load_info,
    read_lerobot_episodes,
    read_stats,
)
from vlafoundry.data.lerobot_export import export_dataset_lerobot, feature_stats
from vlafoundry.data.lerobot_verify import verify_lerobot
from vlafoundry.data.source import iterate_source_episodes, resolve_source

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "lerobot"


def _golden_module():
    spec = importlib.util.spec_from_file_location("lerobot_golden", REPO / "scripts" / "lerobot_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GOLDEN = _golden_module()


@pytest.fixture()
def golden(tmp_path: Path):
    """A writable copy of a golden dataset (the reader keeps its training cache beside the data)."""
    def copy(name: str) -> Path:
        dst = tmp_path / name
        shutil.copytree(FIXTURES / name, dst)
        return dst
    return copy


# ------------------------------------------------------------------------------------------ golden: lerobot -> us
@pytest.mark.parametrize("name", ["state_action", "video"])
def test_golden_episodes_match_what_lerobot_was_given(name: str) -> None:
    spec = GOLDEN.GOLDEN[name]
    eps = read_lerobot_episodes(FIXTURES / name)
    assert [len(e["action"]) for e in eps] == spec["lengths"]
    assert [e["instruction"] for e in eps] == spec["tasks"]
    for e, ep in enumerate(eps):
        n = len(ep["action"])
        assert ep["state"].shape[0] == n + 1  # the last observation repeated (n + 1 convention)
        for f in range(n):
            want = GOLDEN.frame_values(name, e, f)
            np.testing.assert_allclose(ep["state"][f], want["observation.state"])
            np.testing.assert_allclose(np.reshape(ep["action"][f], -1), want["action"])
            if name == "video":  # AV1 at crf 30 (lerobot's default): flat colours within a few levels
                diff = np.abs(ep["image"][f].astype(int) - want["observation.images.cam"].astype(int))
                assert diff.mean() < 4, (e, f, diff.mean())
    if name == "video":
        assert eps[0]["image"].shape == (4, 64, 64, 3) and eps[0]["action"].dtype == np.int64
    else:
        assert eps[0]["image"] is None and eps[0]["action"].dtype == np.float32


def test_golden_trains_as_demo_dataset_with_spec_from_features(golden) -> None:
    root = golden("state_action")
    ds = DemoDataset(root, split="all", chunk=2, normalize=True)
    assert ds.env_name is None  # a foreign dataset: no vlafoundry env (closed loop needs --data.env)
    assert ds.spec.action_type == "continuous" and ds.spec.action_dim == 2 and ds.spec.state_dim == 4
    assert ds.spec.max_episode_steps == 6 and ds.spec.image_shape is None
    stats = read_stats(root)
    np.testing.assert_allclose(ds.spec.action_high, np.reshape(stats["action"]["max"], -1), rtol=1e-6)
    np.testing.assert_allclose(ds.stats["state"]["mean"], np.reshape(stats["observation.state"]["mean"], -1),
                               rtol=1e-5, atol=1e-5)  # the cache's statistics agree with lerobot's stats.json
    assert len(ds) == 15 and set(ds.instructions) == {"push the block", "open the drawer"}
    batch = ds.__getitems__([0, 5])
    assert tuple(batch["state"].shape) == (2, 1, 4) and tuple(batch["action"].shape) == (2, 2, 2)

    vds = DemoDataset(golden("video"), split="all")
    assert vds.discrete and vds.spec.num_actions == 5  # max action 4 in stats.json, plus one
    assert vds.image_shape == (64, 64, 3)


def test_golden_stats_have_lerobots_layout() -> None:
    stats = read_stats(FIXTURES / "video")
    ours = feature_stats(np.stack([GOLDEN.frame_values("video", 0, f)["observation.images.cam"] for f in range(3)]),
                         image=True)
    assert np.shape(stats["observation.images.cam"]["mean"]) == np.shape(ours["mean"]) == (3, 1, 1)
    assert set(ours) == set(stats["observation.state"])  # min max mean std count q01 q10 q50 q90 q99


def test_feature_map_overrides_and_errors(golden, monkeypatch: pytest.MonkeyPatch) -> None:
    root = golden("state_action")
    with pytest.raises(ValueError, match=r"no feature 'obs.joints' for state .*observation.state"):
        load_info(root, FeatureMap(state="obs.joints"))
    monkeypatch.setenv(MAPPING_ENV, "state=action,action=observation.state")  # swap roles: shapes follow
    eps = read_lerobot_episodes(root)
    assert eps[0]["state"].shape == (6, 2) and eps[0]["action"].shape == (5, 4)
    monkeypatch.setenv(MAPPING_ENV, "state")
    with pytest.raises(ValueError, match="expected comma-separated KEY=VALUE"):
        load_info(root)
    monkeypatch.setenv(MAPPING_ENV, "discrete=maybe")
    with pytest.raises(ValueError, match="discrete expects true or false"):
        load_info(root)


def test_wrong_codebase_version_is_named(golden) -> None:
    root = golden("state_action")
    info = json.loads((root / "meta/info.json").read_text())
    info["codebase_version"] = "v2.1"
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"codebase_version 'v2.1', expected 'v3.0'"):
        DemoDataset(root)


# ------------------------------------------------------------------------------------------ round trip: us -> us
def _same_episodes(a: list[dict], b: list[dict], image_tol: int = 0) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        n = len(x["action"])
        assert (x["instruction"], x["task"], x["seed"]) == (y["instruction"], y["task"], y["seed"])
        np.testing.assert_allclose(x["state"][:n], y["state"][:n], rtol=1e-6)
        np.testing.assert_array_equal(x["action"], y["action"])
        np.testing.assert_allclose(x["reward"], y["reward"])
        if x["image"] is not None:
            assert np.abs(x["image"][:n].astype(int) - y["image"][:n].astype(int)).max() <= image_tol


def test_round_trip_babyai_symbolic_and_train(babyai_root: Path, tmp_path: Path) -> None:
    from vlafoundry.train.config import load_config
    from vlafoundry.train.trainer import Trainer

    out = tmp_path / "lr"
    info, note = export_dataset_lerobot(babyai_root, out)
    assert note is None and info["features"]["observation.grid"]["dtype"] == "uint8"
    assert verify_lerobot(out) == []  # `vlafoundry data verify` on our own export
    assert info["features"]["action"]["dtype"] == "int64"
    src = list(iterate_source_episodes(resolve_source(babyai_root)))
    _same_episodes(src, read_lerobot_episodes(out))
    a, b = DemoDataset(babyai_root, split="all", history=2, chunk=3), DemoDataset(out, split="all", history=2, chunk=3)
    assert (a.env_name, a.spec, a.tasks, a.instructions) == (b.env_name, b.spec, b.tasks, b.instructions)
    ba, bb = a.__getitems__(range(len(a))), b.__getitems__(range(len(b)))
    for key in ("state", "image", "action", "action_mask", "obs_mask", "instruction_id", "task_id", "episode"):
        np.testing.assert_array_equal(np.asarray(ba[key]), np.asarray(bb[key]), err_msg=key)
    stats = read_stats(out)
    np.testing.assert_allclose(np.reshape(stats["observation.state"]["mean"], -1), a.stats["state"]["mean"], atol=1e-6)
    assert stats["action"]["count"] == [len(a)]

    tiny = ["--model.d_model", "32", "--model.d_ff", "64", "--model.num_layers", "1", "--model.vision_layers", "0",
            "--model.text_layers", "0", "--model.embed_dim", "16", "--train.batch_size", "8", "--train.steps", "3",
            "--train.warmup_steps", "1", "--train.checkpoint_every", "3", "--train.eval_every", "3",
            "--train.log_every", "3", "--train.progress", "false", "--train.threads", "1",
            "--data.val_fraction", "0.25", "--data.path", str(out)]
    summary = Trainer(load_config("babyai-gotolocal", tiny), tmp_path / "run", dataset_root=out).fit()
    assert summary["step"] == 3


def test_round_trip_rgb_video(tmp_path: Path) -> None:
    pytest.importorskip("av")
    from vlafoundry.data import generate_dataset

    root = tmp_path / "rgb"
    generate_dataset("babyai/GoToLocal", 2, root, workers=1, seed=0, image="rgb", progress=False)
    out = tmp_path / "lr"
    info, _ = export_dataset_lerobot(root, out)
    feat = info["features"]["observation.images.rgb"]
    assert feat["dtype"] == "video" and feat["shape"] == [56, 56, 3] and feat["info"]["video.codec"] == "h264"
    assert (out / "videos/observation.images.rgb/chunk-000/file-000.mp4").is_file()
    assert verify_lerobot(out) == []
    src = list(iterate_source_episodes(resolve_source(root)))
    _same_episodes(src, read_lerobot_episodes(out), image_tol=2)  # H.264 crf 0 in 4:4:4: colour rounding only
    assert np.shape(read_stats(out)["observation.images.rgb"]["mean"]) == (3, 1, 1)
    _, note = export_dataset_lerobot(root, tmp_path / "noimg", images=False)
    assert "not exported" in note and DemoDataset(tmp_path / "noimg", split="all").image_shape is None


def test_round_trip_metaworld_continuous(tmp_path: Path) -> None:
    pytest.importorskip("metaworld")
    from vlafoundry.data import generate_dataset

    root = tmp_path / "mw"
    generate_dataset("metaworld/reach", 2, root, workers=1, seed=0, progress=False)
    out = tmp_path / "lr"
    info, _ = export_dataset_lerobot(root, out, fps=80)
    assert info["features"]["action"] == {"dtype": "float32", "shape": [4], "names": ["a0", "a1", "a2", "a3"]}
    assert info["fps"] == 80 and "observation.images.rgb" not in info["features"]
    src = list(iterate_source_episodes(resolve_source(root)))
    _same_episodes(src, read_lerobot_episodes(out))
    assert verify_lerobot(out) == []  # fps 80: timestamps frame_index / 80
    assert DemoDataset(out, split="all").env_name == "metaworld/reach"


def test_export_cli_refuses_non_empty_out(babyai_root: Path, tmp_path: Path, capsys) -> None:
    from vlafoundry.cli.main import main

    out = tmp_path / "lr"
    out.mkdir()
    (out / "x").write_text("keep")
    assert main(["data", "export", str(babyai_root), "--format", "lerobot", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err and (out / "x").read_text() == "keep"
    assert main(["data", "export", str(babyai_root), "--format", "rlds", "--out", str(out)]) == 2
    assert main(["data", "export", str(babyai_root), "--out", str(out), "--overwrite"]) == 0
    assert (out / "meta/info.json").is_file()
