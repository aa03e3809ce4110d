"""loss.positions: object and goal positions recovered by replaying Meta-World pixel demonstrations, and a tiny
pixel policy that learns to read them from the frame (CPU, real generated data)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlafoundry.config import ConfigError

pytest.importorskip("metaworld")


@pytest.fixture(scope="module")
def mw_pixels(tmp_path_factory):
    from vlafoundry.data import generate_dataset
    from vlafoundry.envs.render import rendering_error

    if rendering_error() is not None:
        pytest.skip(f"no offscreen rendering: {rendering_error()}")
    root = tmp_path_factory.mktemp("mwpx") / "ds"
    # reach and push, two episodes each (round robin), DART noise so the replay must redraw it too
    generate_dataset(["metaworld/reach", "metaworld/push"], 4, root, workers=1, seed=3, image="rgb", image_size=32,
                     action_noise=0.2, progress=False)
    return root


def test_replay_recovers_the_full_state_of_every_step(mw_pixels):
    from vlafoundry.data import DemoDataset
    from vlafoundry.data.replay import LABELS_DIR, full_states
    from vlafoundry.envs import make_env
    from vlafoundry.envs.metaworld import POSITION_INDEX

    ds = DemoDataset(mw_pixels, split="all", val_fraction=0.0)
    full = full_states(mw_pixels, {"image": "symbolic", "proprio": "full"}, progress=False)
    assert full.shape == (len(ds), 39) and full.dtype == np.float32
    stored = np.asarray(np.load(ds.cache_dir / "state.npy"))
    np.testing.assert_allclose(full[:, :4], stored, atol=1e-6)  # the proprioception the frames came with
    # each episode's goal is the one its seed draws; the reset state is the env's own
    for e in range(ds.num_episodes):
        s0 = int(ds.episode_starts[e])
        env = make_env(ds.tasks[int(ds._ep_task[e])], image="symbolic", proprio="full")
        obs = env.reset(seed=int(ds._ep_seed[e]))
        np.testing.assert_allclose(full[s0], obs["state"], atol=1e-6)
        goal = full[s0 : s0 + int(ds._ep_len[e]), 36:39]
        assert np.ptp(goal, axis=0).max() < 1e-6  # fixed within the episode
        env.close()
    assert len(POSITION_INDEX) == 9
    # kept beside the cache and read back (no second replay) while the cache is unchanged
    meta = json.loads((mw_pixels / LABELS_DIR / "full_state.json").read_text())
    assert meta["num_steps"] == len(ds)
    (mw_pixels / LABELS_DIR / "full_state.npy").write_bytes(b"")  # a broken copy is replayed again, not trusted
    again = full_states(mw_pixels, {"image": "symbolic", "proprio": "full"}, progress=False)
    np.testing.assert_array_equal(again, full)


def test_a_replay_that_differs_from_the_recording_is_refused(mw_pixels, tmp_path):
    import shutil

    from vlafoundry.data.replay import ReplayMismatch, replay_full_states

    copy = tmp_path / "ds"
    shutil.copytree(mw_pixels, copy, ignore=shutil.ignore_patterns("labels"))
    meta = json.loads((copy / "vlafoundry.json").read_text())
    meta["generation"]["action_noise"] = 0.0  # not the noise the episodes were recorded with
    (copy / "vlafoundry.json").write_text(json.dumps(meta))
    with pytest.raises(ReplayMismatch, match="episode 0"):
        replay_full_states(copy, {"image": "symbolic", "proprio": "full"}, progress=False)
    del meta["generation"]
    (copy / "vlafoundry.json").write_text(json.dumps(meta))
    with pytest.raises(ReplayMismatch, match="cannot be replayed"):
        replay_full_states(copy, {"image": "symbolic", "proprio": "full"}, progress=False)


def test_tiny_pixel_policy_trains_with_position_labels_and_acts(mw_pixels, tiny_args, tmp_path, monkeypatch):
    from vlafoundry.train.config import load_config
    from vlafoundry.train.trainer import Trainer

    args = [*tiny_args, "--model.patch_size", "8", "--model.image_shift", "0", "--model.position_labels", "metaworld",
            "--model.position_tokens", "add", "--loss.positions", "1.0", "--train.steps", "12", "--train.lr", "3e-3",
            "--train.batch_size", "16", "--train.eval_every", "6", "--train.checkpoint_every", "100"]
    cfg = load_config("metaworld-mt10-pixels", args)
    tr = Trainer(cfg, tmp_path / "run", dataset_root=mw_pixels)
    batch = tr._labelled(tr.train_ds.__getitems__([0, 1, 2]))
    assert batch["position_labels"].shape == (3, 9) and batch["position_labels"].dtype == torch.float32
    tr.fit()
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["split"] == "train"]
    assert all("positions" in r and "positions_l1" in r for r in train)
    assert train[-1]["positions"] < train[0]["positions"], [r["positions"] for r in train]
    assert any(r["split"] == "val" and "positions_l1" in r for r in recs)
    # every parameter of the head and of the position embedding got a gradient in one step
    policy = tr.policy.train()
    policy.zero_grad()
    loss, _ = policy(tr._labelled(tr.train_ds.__getitems__(list(range(8)))))
    loss.backward()
    for name, p in policy.named_parameters():
        if name.startswith(("position_head", "position_proj")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    # acting needs no labels: the predicted positions reach the state token
    policy.eval()
    policy.reset()
    item = tr.train_ds[0]
    a = policy.select_action({"image": item["image"][-1:].numpy(), "state": item["state"][-1:].numpy(),
                              "instruction": [item["instruction"]]})
    assert a.shape == (1, 4) and np.isfinite(a).all()
    # bench/positions.py measures the head per task and point, in cm, beside the task-mean baseline
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_positions", Path(__file__).parents[2] / "bench/positions.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(sys, "argv", ["positions.py", str(tmp_path / "run"), "--data", str(mw_pixels), "--out",
                                      str(tmp_path / "pos.json")])
    bench.main()
    res = json.loads((tmp_path / "pos.json").read_text())
    assert {(r["task"], r["point"]) for r in res["rows"]} <= {(t, p) for t in ("metaworld/reach", "metaworld/push")
                                                              for p in ("object", "goal")}
    assert res["rows"] and all(r["head_cm"] >= 0 and r["task_mean_cm"] >= 0 for r in res["rows"])


def test_position_labels_are_refused_where_they_cannot_work(gotolocal_root):
    from vlafoundry.models.config import PolicyConfig

    with pytest.raises(ValueError, match="model.position_labels"):
        PolicyConfig(vision="grid", position_labels="metaworld")
    with pytest.raises(ValueError, match="model.position_tokens"):
        PolicyConfig(vision="patch", position_tokens="add")
    with pytest.raises(ValueError, match="model.position_labels"):
        PolicyConfig(vision="patch", position_labels="nope")
    # BabyAI data has no position labels, Meta-World names its scheme: named before any step
    from vlafoundry.data import DemoDataset
    from vlafoundry.train.labels import position_targets

    with pytest.raises(ConfigError, match="provide no position labels"):
        position_targets("babyai/GoToLocal", "metaworld", DemoDataset(gotolocal_root))
    with pytest.raises(ConfigError, match="expected 'metaworld'"):
        position_targets("metaworld/reach", "other", DemoDataset(gotolocal_root))


def test_position_head_reads_every_cameras_cls_token():
    """With K cameras the head reads the K CLS tokens side by side: changing only the second camera's frame changes
    the predicted positions, and a training step reaches every parameter of the head from both cameras."""
    from vlafoundry.models import PolicyConfig, PolicySpec, VLAPolicy
    from vlafoundry.nn.language import TextTokenizer

    cfg = PolicyConfig(vision="patch", vision_stem="conv", patch_size=8, position_labels="metaworld",
                       position_tokens="add", head="continuous", d_model=32, num_heads=2, d_ff=64, num_layers=1,
                       vision_layers=1, embed_dim=16)
    spec = PolicySpec(env="metaworld/reach", action_type="continuous", action_dim=4, action_low=[-1.0] * 4,
                      action_high=[1.0] * 4, state_dim=4, image_shape=[2, 32, 32, 3], state_mean=[0.0] * 4,
                      state_std=[1.0] * 4)
    torch.manual_seed(0)
    words = ["reach the goal", "push the puck"]
    p = VLAPolicy(cfg, spec, TextTokenizer.train(words * 4, kind="word"))
    assert p.position_head[1].in_features == 2 * 32
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (3, 1, 2, 32, 32, 3), dtype=np.uint8)  # (B, T, K, H, W, C)
    batch = {"image": image, "state": rng.normal(size=(3, 1, 4)).astype(np.float32), "instruction": words[:1] * 3,
             "action": rng.uniform(-1, 1, (3, 1, 4)).astype(np.float32), "action_mask": np.ones((3, 1), bool),
             "position_labels": rng.normal(size=(3, 9)).astype(np.float32)}
    p.eval()
    with torch.no_grad():
        enc = p.encode(p.prepare(batch))
        other = dict(batch, image=image.copy())
        other["image"][:, :, 1] = 255 - other["image"][:, :, 1]  # the second camera only
        enc2 = p.encode(p.prepare(other))
    assert enc["extras"]["vision_cls"].shape == (3, 1, 64)
    assert not torch.allclose(enc["extras"]["position_pred"], enc2["extras"]["position_pred"])
    p.train()
    from vlafoundry.models.objectives import LossConfig

    loss, metrics = p(batch, LossConfig(positions=1.0))
    loss.backward()
    assert "positions_l1" in metrics
    for name, prm in p.named_parameters():
        if name.startswith(("position_head", "position_proj")):
            assert prm.grad is not None and prm.grad.abs().sum() > 0, name


def test_with_two_ddp_processes_the_replay_runs_once(mw_pixels, tiny_args, tmp_path):
    """torchrun, 2 ranks, a dataset without labels/: rank 0 replays (and caches) the positions, rank 1 waits for it
    and reads the cache (it used to replay too); both train on the same targets."""
    import os
    import shutil
    import subprocess
    import sys

    from vlafoundry.data.replay import LABELS_DIR

    data = tmp_path / "ds"
    shutil.copytree(mw_pixels, data, ignore=shutil.ignore_patterns(LABELS_DIR))
    args = ["--preset", "metaworld-mt10-pixels", "--data", str(data), "--out", str(tmp_path / "run"), *tiny_args,
            "--model.patch_size", "8", "--model.image_shift", "0", "--model.position_labels", "metaworld",
            "--model.position_tokens", "add", "--loss.positions", "1.0", "--train.steps", "2",
            "--train.batch_size", "8", "--train.eval_every", "100", "--train.checkpoint_every", "100",
            "--train.progress", "true"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", VLAFOUNDRY_PROGRESS="lines")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "vlafoundry", "train", *args], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 2
    assert (data / LABELS_DIR / "full_state.npy").exists()
    log = out.stdout + out.stderr
    assert log.count("replay: 4/4 ep (100%)") == 1, log[-3000:]  # one rank replayed the 4 episodes
