"""Images compressed on disk: lossless round trips through Minari and the training cache, damage found and
repaired, older raw caches still read, and the compression ratio on BabyAI RGB frames bounded from below."""

from __future__ import annotations

import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from vlafoundry.data import DemoDataset, generate_dataset, verify_dataset
from vlafoundry.data import generate as generate_mod
from vlafoundry.data.cache import CACHE_META, build_cache
from vlafoundry.data.format import minari_datasets_path, read_json, write_json_atomic
from vlafoundry.data.frames import (
    BLOB_FILE,
    OFFSETS_FILE,
    CompressedFrames,
    CorruptFramesError,
    DecodedFrames,
    open_frames,
    ram_budget,
    write_frames,
)
from vlafoundry.data.h5compress import compress_hdf5, image_storage, update_minari_size
from vlafoundry.data.verify import load_minari

MAIN = "minari/vlafoundry/babyai-gotolocal-v0/data/main_data.hdf5"
N_RGB = 6


@pytest.fixture(scope="module")
def rgb_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same 6 GoToLocal RGB episodes generated compressed and (Minari compression off) as before."""
    base = tmp_path_factory.mktemp("rgb")
    generate_dataset("babyai/GoToLocal", N_RGB, base / "new", image="rgb", progress=False)
    mp = pytest.MonkeyPatch()
    mp.setattr(generate_mod, "compress_hdf5", lambda path: None)
    try:
        generate_dataset("babyai/GoToLocal", N_RGB, base / "plain", image="rgb", progress=False)
    finally:
        mp.undo()
    return base / "new", base / "plain"


def _frames(k: int | None, n: int, seed: int) -> np.ndarray:
    """(n, [K,] 12, 10, 3) uint8 frames: flat regions (compressible) with noise in one corner."""
    rng = np.random.default_rng(seed)
    shape = (n, 12, 10, 3) if k is None else (n, k, 12, 10, 3)
    x = np.zeros(shape, dtype=np.uint8)
    x[..., :6, :, :] = rng.integers(0, 4, size=(n, 1, 1, 3) if k is None else (n, k, 1, 1, 3)) * 60
    x[..., :3, :3, :] = rng.integers(0, 256, size=x[..., :3, :3, :].shape)
    return x


# --------------------------------------------------------------------------------------------- Minari
def test_minari_reads_compressed_frames_bit_identical(rgb_pair: tuple[Path, Path]) -> None:
    new, plain = rgb_pair
    stored = image_storage(new / MAIN)
    assert stored["filters"] == ["gzip"] and image_storage(plain / MAIN)["filters"] == ["none"]
    a, b = load_minari(new), load_minari(plain)  # minari.load_dataset under MINARI_DATASETS_PATH
    assert a.total_episodes == b.total_episodes == N_RGB and a.total_steps == b.total_steps
    for ea, eb in zip(a.iterate_episodes(), b.iterate_episodes(), strict=True):
        img_a, img_b = ea.observations["image"], eb.observations["image"]
        assert img_a.dtype == np.uint8 and img_a.shape[1:] == (56, 56, 3)
        assert np.array_equal(img_a, img_b)
        assert np.array_equal(ea.observations["direction"], eb.observations["direction"])
        assert ea.observations["mission"] == eb.observations["mission"]
        assert np.array_equal(ea.actions, eb.actions) and ea.actions.dtype == eb.actions.dtype
    assert verify_dataset(new) == []


def test_minari_round_trip_several_cameras(tmp_path: Path) -> None:
    """A (K, H, W, 3) image space: compress_hdf5 keeps what minari.load_dataset returns."""
    import minari
    from gymnasium import spaces
    from minari.data_collector import EpisodeBuffer

    obs_space = spaces.Dict({"image": spaces.Box(0, 255, (2, 12, 10, 3), np.uint8),
                             "state": spaces.Box(-1, 1, (4,), np.float32)})
    eps = []
    for i, n in enumerate((3, 700)):  # a short episode stays contiguous-small, a long one is chunked
        state = np.random.default_rng(i).uniform(-1, 1, (n + 1, 4)).astype(np.float32)
        eps.append(EpisodeBuffer(id=i, seed=i, observations={"image": _frames(2, n + 1, i), "state": state},
                                 actions=np.arange(n) % 3, rewards=np.zeros(n, np.float32),
                                 terminations=np.zeros(n, bool), truncations=np.zeros(n, bool), infos={}))
    with minari_datasets_path(tmp_path), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("test/cams-v0", eps, observation_space=obs_space,
                                           action_space=spaces.Discrete(3), data_format="hdf5", jpeg_encoding=False)
        data_dir = tmp_path / "test" / "cams-v0" / "data"
        before = [(e.observations["image"].copy(), e.observations["state"].copy())
                  for e in minari.load_dataset("test/cams-v0").iterate_episodes()]
        raw_bytes = (data_dir / "main_data.hdf5").stat().st_size
        compress_hdf5(data_dir / "main_data.hdf5")
        update_minari_size(data_dir)
        assert (data_dir / "main_data.hdf5").stat().st_size < raw_bytes / 3
        after = list(minari.load_dataset("test/cams-v0").iterate_episodes())
    assert len(after) == 2
    for (img, state), ep in zip(before, after, strict=True):
        assert ep.observations["image"].dtype == np.uint8 and ep.observations["image"].shape == img.shape
        assert np.array_equal(ep.observations["image"], img) and np.array_equal(ep.observations["state"], state)


# ----------------------------------------------------------------------------------------- cache frames
@pytest.mark.parametrize(("cameras", "group"), [(None, 1), (None, 8), (3, 4)])
def test_cache_frames_round_trip(tmp_path: Path, cameras: int | None, group: int) -> None:
    chunks = [_frames(cameras, n, i) for i, n in enumerate((5, 1, 9))]
    record = write_frames(chunks, tmp_path, group=group)
    everything = np.concatenate(chunks)
    assert record["shape"] == list(everything.shape[1:]) and record["frames"] == 15
    assert len(np.load(tmp_path / OFFSETS_FILE)) == -(-15 // group) + 1
    idx = np.asarray([14, 0, 0, 7, 5, 14], dtype=np.int64)
    streamed = CompressedFrames(tmp_path, record)
    assert streamed.shape == everything.shape and np.array_equal(streamed[idx], everything[idx])
    in_ram = open_frames(tmp_path, record, rows=np.arange(5, 15), budget=1 << 20)
    assert isinstance(in_ram, DecodedFrames) and np.array_equal(in_ram[idx[idx >= 5]], everything[idx[idx >= 5]])
    with pytest.raises(IndexError, match="not decoded"):
        in_ram[np.asarray([0])]
    assert isinstance(open_frames(tmp_path, record, budget=everything.nbytes - 1), CompressedFrames)
    with pytest.raises(ValueError, match="group"):
        write_frames(chunks, tmp_path, group=0)
    with pytest.raises(ValueError, match="one shape"):
        write_frames([chunks[0], chunks[1][:, :2] if cameras else chunks[1][:, :5]], tmp_path)


def test_ram_budget_from_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLAFOUNDRY_IMAGE_RAM_MB", "2")
    assert ram_budget() == 2 << 20 and ram_budget(5) == 5
    monkeypatch.setenv("VLAFOUNDRY_IMAGE_RAM_MB", "lots")
    with pytest.raises(ValueError, match="VLAFOUNDRY_IMAGE_RAM_MB"):
        ram_budget()
    with pytest.raises(ValueError, match=">= 0"):
        ram_budget(-1)


def test_cache_of_several_cameras_through_demo_dataset(tmp_path: Path, rgb_pair: tuple[Path, Path]) -> None:
    """build_cache + DemoDataset are shape-agnostic past the step axis: (K, H, W, 3) frames come back whole."""
    new, _ = rgb_pair
    eps = [{"seed": i, "task": "babyai/GoToLocal", "instruction": "go to the red ball", "image": _frames(2, n + 1, i),
            "state": np.zeros((n + 1, 4), np.float32), "action": np.arange(n) % 7} for i, n in enumerate((4, 6))]
    cache = tmp_path / "cams_cache"
    meta = build_cache(eps, cache, ["babyai/GoToLocal"], source=new / MAIN)
    assert meta["image"]["shape"] == [2, 12, 10, 3] and not (cache / "image.npy").exists()
    # point a copy of the dataset at this cache (its source file is the dataset's Minari file)
    for budget in (None, 0):
        ds = DemoDataset(new, split="all", history=2, cache_dir=cache, image_ram_budget=budget)
        batch = ds.__getitems__(list(range(len(ds))))
        want = np.concatenate([ep["image"][:-1] for ep in eps])
        assert batch["image"].shape == (10, 2, 2, 12, 10, 3)
        assert np.array_equal(batch["image"][:, 1].numpy(), want)
        assert not batch["image"][0, 0].any() and np.array_equal(batch["image"][1, 0].numpy(), want[0])


def test_demo_dataset_frames_match_minari(rgb_pair: tuple[Path, Path]) -> None:
    new, _ = rgb_pair
    frames = np.concatenate([e.observations["image"][:-1] for e in load_minari(new).iterate_episodes()])
    for budget in (None, 0):  # decoded into RAM / inflated per batch
        ds = DemoDataset(new, split="all", image_ram_budget=budget)
        assert type(ds._images) is (DecodedFrames if budget is None else CompressedFrames)
        assert np.array_equal(ds.__getitems__(list(range(len(ds))))["image"][:, 0].numpy(), frames)
    clone = pickle.loads(pickle.dumps(DemoDataset(new, split="train", val_fraction=0.3)))  # a spawned worker
    ds = DemoDataset(new, split="train", val_fraction=0.3)
    assert clone._images is None and np.array_equal(clone[3]["image"].numpy(), ds[3]["image"].numpy())
    assert isinstance(clone._images, CompressedFrames)


# ----------------------------------------------------------------------------------- damage and old caches
def test_corrupt_compressed_cache_is_found_and_rebuilt(rgb_pair: tuple[Path, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(rgb_pair[0], copy)
    good = DemoDataset(copy, split="all")[2]["image"].numpy()
    blob = copy / "cache" / BLOB_FILE
    data = bytearray(blob.read_bytes())
    offsets = np.load(copy / "cache" / OFFSETS_FILE)
    for o in offsets[:-1:3]:  # damage several frames' deflate streams (sizes unchanged)
        data[int(o) + 5] ^= 0xFF
    blob.write_bytes(bytes(data))
    problems = verify_dataset(copy)
    assert any(p.startswith(f"cache/{BLOB_FILE}") and "corrupted" in p for p in problems), problems
    with pytest.raises(CorruptFramesError, match="does not inflate|inflates to"):
        DemoDataset(copy, split="all", image_ram_budget=0)[0]  # inflated per batch: the error names the file
    with pytest.warns(UserWarning, match="rebuilding the training cache"):
        ds = DemoDataset(copy, split="all")  # decoding into RAM finds it, and the cache is rebuilt
    assert np.array_equal(ds[2]["image"].numpy(), good)
    assert verify_dataset(copy) == []


def test_cache_written_before_compression_still_loads(rgb_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """An older cache (raw cache/image.npy, no "image" record) is read as it is, memory-mapped, and verifies."""
    copy = tmp_path / "old"
    shutil.copytree(rgb_pair[0], copy)
    cache = copy / "cache"
    want = DemoDataset(copy, split="all").__getitems__(list(range(6)))["image"].numpy()
    frames = CompressedFrames(cache, read_json(cache / CACHE_META)["image"])
    np.save(cache / "image.npy", frames[np.arange(len(frames))], allow_pickle=False)
    meta = read_json(cache / CACHE_META)
    del meta["image"]
    for name in (BLOB_FILE, OFFSETS_FILE):
        (cache / name).unlink()
        del meta["files"][name]
    from vlafoundry.data.format import file_record

    meta["files"]["image.npy"] = file_record(cache / "image.npy")
    write_json_atomic(cache / CACHE_META, meta)
    ds = DemoDataset(copy, split="all")
    assert isinstance(ds._images, np.memmap) and ds.image_shape == (56, 56, 3)
    assert np.array_equal(ds.__getitems__(list(range(6)))["image"].numpy(), want)
    assert verify_dataset(copy) == []


# ------------------------------------------------------------------------------------------------ size
def test_compression_ratio_on_babyai_rgb(rgb_pair: tuple[Path, Path]) -> None:
    """Loose lower bounds (measured on these 6 episodes: 48x for the Minari frames and for the cache's; docs/data.md
    has the 400- and 5,000-episode figures), so a regression to raw storage fails."""
    new, plain = rgb_pair
    meta = read_json(new / "vlafoundry.json")
    steps = meta["counts"]["steps"]
    stored = image_storage(new / MAIN)
    assert stored["raw_bytes"] / stored["stored_bytes"] >= 10
    frame_bytes = 56 * 56 * 3
    cache_image = (new / "cache" / BLOB_FILE).stat().st_size
    assert steps * frame_bytes / cache_image >= 10

    def arrays(root: Path) -> int:  # the HDF5 file and the cache's arrays (JSON metadata is a fixed cost)
        return (root / MAIN).stat().st_size + sum(p.stat().st_size for p in (root / "cache").iterdir()
                                                  if p.suffix != ".json")

    raw_image_npy = steps * frame_bytes - cache_image  # the raw cache/image.npy held every step's frame
    assert (arrays(plain) + raw_image_npy) / arrays(new) >= 5
