"""DemoDataset / PairDataset / ModalityDropout / collate over the training cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vlafoundry.data import DemoDataset, ModalityDropout, PairDataset, collate, generate_dataset, load_minari
from vlafoundry.data.dataset import split_episodes


def _minari_steps(root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[int]]:
    """States (one-hot directions), images and actions of every step, read back through Minari."""
    states, images, actions, lengths = [], [], [], []
    for ep in load_minari(root).iterate_episodes():
        n = len(ep.actions)
        states.append(np.eye(4, dtype=np.float32)[ep.observations["direction"][:n]])
        images.append(ep.observations["image"][:n])
        actions.append(ep.actions)
        lengths.append(n)
    return np.concatenate(states), np.concatenate(images), np.concatenate(actions), lengths


def test_chunk_padding_at_episode_ends(babyai_root: Path) -> None:
    K = 4
    ds = DemoDataset(babyai_root, split="all", chunk=K)
    _, _, actions, lengths = _minari_steps(babyai_root)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    b = ds.__getitems__(list(range(len(ds))))
    assert b["action"].shape == (len(ds), K) and b["action"].dtype == torch.int64
    assert b["action_mask"].shape == (len(ds), K) and b["action_mask"].dtype == torch.bool
    for i in range(len(ds)):  # brute force reference
        e, t = int(b["episode"][i]), int(b["step"][i])
        for k in range(K):
            valid = t + k < lengths[e]
            assert bool(b["action_mask"][i, k]) == valid
            expected = actions[starts[e] + t + k] if valid else 0
            assert int(b["action"][i, k]) == expected
    last = [int(starts[e] + lengths[e] - 1) for e in range(len(lengths))]
    assert b["action_mask"][last, 0].all() and not b["action_mask"][last, 1:].any()


def test_history_padding_at_episode_starts(babyai_root: Path) -> None:
    T = 3
    ds = DemoDataset(babyai_root, split="all", history=T)
    states, images, _, lengths = _minari_steps(babyai_root)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    b = ds.__getitems__(list(range(len(ds))))
    assert b["image"].shape == (len(ds), T, 7, 7, 3) and b["state"].shape == (len(ds), T, 4)
    for i in range(len(ds)):
        e, t = int(b["episode"][i]), int(b["step"][i])
        for j in range(T):
            src = t - (T - 1 - j)
            assert bool(b["obs_mask"][i, j]) == (src >= 0)
            if src >= 0:
                assert np.array_equal(b["image"][i, j].numpy(), images[starts[e] + src])
                assert np.array_equal(b["state"][i, j].numpy(), states[starts[e] + src])
            else:
                assert not b["image"][i, j].any() and not b["state"][i, j].any()
    first = [int(s) for s in starts]
    assert b["obs_mask"][first, -1].all() and not b["obs_mask"][first, :-1].any()


def test_single_item_matches_batch(babyai_root: Path) -> None:
    ds = DemoDataset(babyai_root, split="all", history=2, chunk=3)
    batch = ds.__getitems__([0, 5, 9])
    for j, i in enumerate([0, 5, 9]):
        item = ds[i]
        for key, value in item.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, batch[key][j]), key
            else:
                assert value == batch[key][j]
    again = collate([ds[0], ds[5], ds[9]])
    assert all(torch.equal(again[k], batch[k]) for k in batch if isinstance(batch[k], torch.Tensor))
    assert collate(batch) is batch
    assert ds[-1]["step"] == ds[len(ds) - 1]["step"]
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_normalisation_statistics_equal_numpy(babyai_root: Path) -> None:
    states, _, actions, _ = _minari_steps(babyai_root)
    ds = DemoDataset(babyai_root, split="all", normalize=True)
    for key, x in (("state", states.astype(np.float64)), ("action", actions.astype(np.float64)[:, None])):
        np.testing.assert_allclose(ds.stats[key]["mean"], x.mean(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(ds.stats[key]["std"], x.std(0), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(ds.stats[key]["min"], x.min(0))
        np.testing.assert_array_equal(ds.stats[key]["max"], x.max(0))
        assert ds.metadata["stats"][key]["mean"] == pytest.approx(x.mean(0).tolist(), rel=1e-6)
    b = ds.__getitems__(list(range(len(ds))))
    expected = (states - states.mean(0)) / np.where(states.std(0) < 1e-6, 1.0, states.std(0))
    np.testing.assert_allclose(b["state"][:, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="normalize_action"):
        DemoDataset(babyai_root, normalize_action=True)


def test_split_by_episode(babyai_root: Path) -> None:
    train = DemoDataset(babyai_root, split="train", val_fraction=0.25, split_seed=3)
    val = DemoDataset(babyai_root, split="val", val_fraction=0.25, split_seed=3)
    every = DemoDataset(babyai_root, split="all")
    assert val.num_episodes == 2 and train.num_episodes == 6
    assert set(train.episodes.tolist()).isdisjoint(val.episodes.tolist())
    assert sorted(train.episodes.tolist() + val.episodes.tolist()) == list(range(every.num_episodes))
    assert len(train) + len(val) == len(every)
    assert set(val.__getitems__(list(range(len(val))))["episode"].tolist()) == set(val.episodes.tolist())
    # the public step map: split sample i is cache step step_ids[i]; the two splits partition the cache's steps
    assert sorted(train.step_ids.tolist() + val.step_ids.tolist()) == list(range(len(every)))
    episode = val.__getitems__(list(range(len(val))))["episode"]  # (N_val,) dataset episode ids
    starts, lengths = every.episode_starts, np.diff(np.append(every.episode_starts, len(every)))
    assert np.all((val.step_ids >= starts[episode]) & (val.step_ids < starts[episode] + lengths[episode]))
    assert val.step_tasks.shape == (len(val),) and set(val.step_tasks.tolist()) <= set(range(len(val.tasks)))
    assert np.array_equal(split_episodes(100, "val", 0.1, 0), split_episodes(100, "val", 0.1, 0))
    assert not np.array_equal(split_episodes(100, "val", 0.1, 0), split_episodes(100, "val", 0.1, 1))
    with pytest.raises(ValueError):
        DemoDataset(babyai_root, split="test")
    with pytest.raises(ValueError):
        DemoDataset(babyai_root, history=0)


def test_dataloader_with_two_workers(babyai_root: Path) -> None:
    ds = DemoDataset(babyai_root, split="all", history=2, chunk=2, transform=ModalityDropout(image=0.5, seed=0))
    loader = DataLoader(ds, batch_size=8, shuffle=True, num_workers=2, collate_fn=collate)
    seen = []
    for batch in loader:
        assert batch["image"].shape[1:] == (2, 7, 7, 3) and isinstance(batch["instruction"], list)
        dropped = ~batch["image_present"]
        assert not batch["image"][dropped].any()
        seen += [(int(e), int(s)) for e, s in zip(batch["episode"], batch["step"])]
    assert len(seen) == len(ds) == len(set(seen))
    # a plain (non-batched) DataLoader path goes through __getitem__ + collate
    items = list(DataLoader(ds, batch_size=None, num_workers=0))[:3]
    assert collate(items)["state"].shape == (3, 2, 4)


def test_modality_dropout() -> None:
    batch = {
        "image": torch.ones(64, 1, 7, 7, 3, dtype=torch.uint8),
        "state": torch.ones(64, 1, 4),
        "instruction": ["go"] * 64,
        "image_present": torch.ones(64, dtype=torch.bool),
        "state_present": torch.ones(64, dtype=torch.bool),
        "instruction_present": torch.ones(64, dtype=torch.bool),
    }
    out = ModalityDropout(image=1.0, instruction=0.0, state=0.5, seed=0)(batch)
    assert not out["image_present"].any() and not out["image"].any()
    assert out["instruction_present"].all() and out["instruction"] == ["go"] * 64
    kept = out["state_present"]
    assert 10 < int(kept.sum()) < 54
    assert out["state"][kept].eq(1).all() and out["state"][~kept].eq(0).all()
    again = ModalityDropout(image=1.0, state=0.5, seed=0)(batch)
    assert torch.equal(again["state_present"], kept)  # seeded
    item = {k: v[0] if not isinstance(v, list) else v[0] for k, v in batch.items()}
    dropped = ModalityDropout(instruction=1.0)(item)
    assert dropped["instruction"] == "" and not bool(dropped["instruction_present"])
    assert torch.equal(ModalityDropout()(batch)["image"], batch["image"])
    with pytest.raises(ValueError):
        ModalityDropout(image=1.5)


def test_pair_dataset(babyai_root: Path) -> None:
    ds = DemoDataset(babyai_root, split="all", history=3, chunk=2)
    pairs = PairDataset(ds)
    assert len(pairs) == len(ds)
    b = pairs.__getitems__([0, 1, 2])
    assert b["image"].shape == (3, 7, 7, 3) and b["state"].shape == (3, 4) and "action" not in b
    full = ds.__getitems__([0, 1, 2])
    assert torch.equal(b["image"], full["image"][:, -1]) and b["instruction"] == full["instruction"]
    item = pairs[1]
    assert item["image"].shape == (7, 7, 3) and isinstance(item["instruction"], str)
    with pytest.raises(ValueError):
        PairDataset([1, 2, 3])  # type: ignore[arg-type]


def test_cache_rebuilt_when_missing_or_source_changes(babyai_root: Path, tmp_path: Path, tree_digest) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(babyai_root, copy)
    shutil.rmtree(copy / "cache")
    DemoDataset(copy)  # rebuilds the cache from the Minari data: same bytes as the generation wrote
    assert tree_digest(copy) == tree_digest(babyai_root)
    other = tmp_path / "other"
    generate_dataset("babyai/GoToLocal", 3, other, seed=100, progress=False)
    data = "minari/vlafoundry/babyai-gotolocal-v0/data"
    minari_dir = copy / "minari/vlafoundry/babyai-gotolocal-v0"
    assert DemoDataset(minari_dir, split="all").num_episodes == 8  # opened as a plain Minari dataset
    shutil.rmtree(copy / data)
    shutil.copytree(other / data, copy / data)  # the Minari data changed under the cache
    with pytest.raises(ValueError, match="main_data.hdf5: .*the dataset is damaged"):
        DemoDataset(copy)  # no longer the file vlafoundry.json records: refused, not silently re-cached
    ds = DemoDataset(minari_dir, split="all")  # a plain Minari dataset has no record: its cache is rebuilt
    ref = DemoDataset(other, split="all")
    assert ds.num_episodes == 3 and ds._ep_seed.tolist() == [100, 101, 102]
    a, b = ds.__getitems__(list(range(len(ds)))), ref.__getitems__(list(range(len(ref))))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["action"], b["action"])


def test_users_own_minari_dataset(babyai_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Minari dataset laid out like Farama's BabyAI datasets (not made by vlafoundry) trains here too."""
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    ours = load_minari(babyai_root)
    buffers = []
    for i, ep in enumerate(ours.iterate_episodes()):
        buffers.append(EpisodeBuffer(id=i, seed=i, observations=dict(ep.observations), actions=ep.actions,
                                     rewards=ep.rewards, terminations=ep.terminations, truncations=ep.truncations))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            "user/BabyAI-GoToLocal/optimal-v0", buffers, env=gym.spec("BabyAI-GoToLocal-v0"),
            observation_space=ours.observation_space, action_space=ours.action_space, data_format="hdf5",
            jpeg_encoding=False,
        )
    by_id = DemoDataset("user/BabyAI-GoToLocal/optimal-v0", split="all", chunk=2)
    ref = DemoDataset(babyai_root, split="all", chunk=2)
    assert by_id.env_name == "babyai/GoToLocal" and by_id.tasks == ["babyai/GoToLocal"]
    a, b = by_id.__getitems__(list(range(len(ref)))), ref.__getitems__(list(range(len(ref))))
    for key in ("image", "state", "action", "action_mask", "instruction_id"):
        assert torch.equal(a[key], b[key]), key
    assert a["instruction"] == b["instruction"]
    by_dir = DemoDataset(tmp_path / "minari" / "user" / "BabyAI-GoToLocal" / "optimal-v0", split="all")
    assert len(by_dir) == len(ref)
    with pytest.raises(FileNotFoundError):
        DemoDataset(tmp_path / "nothing-here")


def test_anchor_first_keeps_the_episode_start_in_slot_0(babyai_root: Path) -> None:
    T = 3
    ds = DemoDataset(babyai_root, split="all", history=T, anchor_first=True)
    _, images, _, lengths = _minari_steps(babyai_root)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    b = ds.__getitems__(list(range(len(ds))))
    for i in range(len(ds)):
        e, t = int(b["episode"][i]), int(b["step"][i])
        assert bool(b["obs_mask"][i, 0]) and np.array_equal(b["image"][i, 0].numpy(), images[starts[e]])
        for j in range(1, T):  # the latest T-1 frames, masked before the episode start
            src = t - (T - 1 - j)
            assert bool(b["obs_mask"][i, j]) == (src >= 0)
            if src >= 0:
                assert np.array_equal(b["image"][i, j].numpy(), images[starts[e] + src])
    with pytest.raises(ValueError, match="anchor_first"):
        DemoDataset(babyai_root, history=1, anchor_first=True)


def test_select_action_history_matches_training_samples(babyai_root: Path) -> None:
    """Acting builds the same frames and masks (history with and without anchor_first) as the dataset gives the
    trainer for the same steps of a real episode, across two episodes in one env slot (reset in between)."""
    from vlafoundry.models import PolicyConfig, VLAPolicy
    from vlafoundry.models.policy import PolicySpec
    from vlafoundry.nn import TextTokenizer

    for anchor in (False, True):
        ds = DemoDataset(babyai_root, split="all", history=3, anchor_first=anchor)
        spec = PolicySpec(env="babyai/GoToLocal", action_type="discrete", action_dim=1, num_actions=7, state_dim=4,
                          image_shape=[7, 7, 3])
        cfg = PolicyConfig(d_model=16, num_heads=2, d_ff=32, num_layers=1, vision_layers=0, text_layers=0,
                           history=3, anchor_first=anchor)
        policy = VLAPolicy(cfg, spec, TextTokenizer.train(list(ds.instructions), kind="word")).eval()
        seen: list[dict] = []
        real = policy.predict_chunk

        def record(batch, **kw):
            seen.append({k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in batch.items()})
            return real(batch, **kw)

        policy.predict_chunk = record  # type: ignore[method-assign]
        policy.reset()
        for e in (0, 1):
            idx = ds.episode_steps(int(ds.episodes[e]))
            b = ds.__getitems__(list(idx))
            seen.clear()
            for t in range(len(idx)):
                obs = {"image": b["image"][t, -1][None].numpy(), "state": b["state"][t, -1][None].numpy(),
                       "instruction": [b["instruction"][t]]}
                policy.select_action(obs)
            policy.reset([0])
            for t, got in enumerate(seen):
                assert torch.equal(got["obs_mask"][0], b["obs_mask"][t]), (anchor, e, t)
                m = b["obs_mask"][t]
                assert torch.equal(got["image"][0][m], b["image"][t][m]), (anchor, e, t)


def test_episode_dataset_serves_whole_episodes_matching_the_step_dataset(babyai_root: Path) -> None:
    """EpisodeDataset: one item per episode of the split, right-padded; every real step equals DemoDataset's step
    (image, state, action chunk), padded steps are zeros with masks False; per-episode fields once per row."""
    from vlafoundry.data import EpisodeDataset, make_dataset

    steps = DemoDataset(babyai_root, split="train", val_fraction=0.25, chunk=2)
    eps = make_dataset(babyai_root, split="train", val_fraction=0.25, chunk=2, sequence=True)
    assert isinstance(eps, EpisodeDataset) and len(eps) == steps.num_episodes == 6 and eps.num_steps == len(steps)
    ids = [3, 0, 5]
    b = eps.__getitems__(ids)
    lengths = b["seq_mask"].sum(1)
    assert b["image"].shape[:2] == b["seq_mask"].shape == (3, int(lengths.max()))
    assert b["action"].shape == (3, int(lengths.max()), 2) and len(b["instruction"]) == 3
    for row, e in enumerate(ids):
        ep = int(steps.episodes[e])
        idx = steps.episode_steps(ep)
        ref = steps.__getitems__(idx.tolist())
        n = len(idx)
        assert int(lengths[row]) == n and int(b["episode"][row]) == ep
        assert torch.equal(b["image"][row, :n], ref["image"][:, 0]) and torch.equal(b["state"][row, :n], ref["state"][:, 0])
        assert torch.equal(b["action"][row, :n], ref["action"]) and torch.equal(b["action_mask"][row, :n], ref["action_mask"])
        assert b["instruction"][row] == ref["instruction"][0]
        assert not b["seq_mask"][row, n:].any() and not b["action_mask"][row, n:].any()
        assert (b["image"][row, n:] == 0).all()
    assert eps[1]["instruction"] == eps.__getitems__([1])["instruction"][0]
    with pytest.raises(IndexError, match="episode index"):
        eps.__getitems__([6])
    with pytest.raises(ValueError, match="history == 1"):
        make_dataset(babyai_root, sequence=True, history=2)


def test_write_json_atomic_keeps_the_old_file_when_encoding_fails(tmp_path: Path) -> None:
    from vlafoundry.data.format import read_json, write_json_atomic

    path = tmp_path / "x.json"
    write_json_atomic(path, {"b": 1, "a": [1, 2]})
    assert path.read_text().index('"a"') < path.read_text().index('"b"')  # sorted keys: deterministic files
    with pytest.raises(TypeError, match="not JSON serializable"):
        write_json_atomic(path, {"p": tmp_path})  # a Path without a default hook
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
    assert read_json(path) == {"a": [1, 2], "b": 1}  # the old content survives the failed write
    write_json_atomic(path, {"p": tmp_path}, default=str)
    assert read_json(path) == {"p": str(tmp_path)}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind
