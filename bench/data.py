"""Demonstration data throughput: generation steps/s per worker count, loader samples/s, bytes on disk, and
compressed image storage (bytes per frame before/after, decode rate vs a pixel policy's training rate).

    python bench/data.py                    # ~4-5 minutes on 2 cores
    python bench/data.py --images-only      # only the image section (~400 GoToLocal RGB episodes, ~1-2 min)
    python bench/data.py --images-only --image-data DIR   # the image section on an existing RGB dataset
    python bench/data.py --full             # also times 10,000 BabyAI GoToLocal episodes with 2 workers

Image section: the same GoToLocal ``--image rgb`` episodes are generated twice, as today (deflate inside the
Minari HDF5, zlib blobs in the cache) and as before (Minari's writer alone; the cache's raw ``image.npy`` size is
N x frame bytes), and bytes per frame are reported for Minari and the cache separately. The decode rate is
frames/s inflated by one process (random batches of 256 steps, CPU time); the consumption is samples/s of a
training step (forward, backward, AdamW; CPU time, one thread) of the ``babyai-gotolocal`` preset's policy with
``model.vision patch`` (patch size 8) on those frames, and the ratio says how many times faster than training
one process decodes.

Generation speed is the roll-out phase (experts playing and shards being written, the part that runs in
parallel); assembly (Minari hdf5 + cache) runs once in the parent and is reported separately. Repeats
are interleaved (1, 2, 1, 2 workers) and medians reported; scaling is the ratio measured in this process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader

from vlafoundry.data import DemoDataset, collate, generate_dataset
from vlafoundry.data.cache import CACHE_META
from vlafoundry.data.format import read_json
from vlafoundry.data.frames import CompressedFrames
from vlafoundry.data.h5compress import image_storage


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_generation(env: str, episodes: int, repeats: int, tmp: Path, **kwargs) -> dict:
    rates: dict[int, list[float]] = {1: [], 2: []}
    cpu_per_step: dict[int, list[float]] = {1: [], 2: []}
    assemble: list[float] = []
    for r in range(repeats):
        for workers in (1, 2):
            out = tmp / f"{env.replace('/', '_')}_{workers}_{r}"
            res = generate_dataset(env, episodes, out, workers=workers, progress=False, **kwargs)
            rates[workers].append(res.steps_generated / res.rollout_s)
            cpu_per_step[workers].append(res.extra["rollout_cpu_s"] / res.steps_generated)
            assemble.append(res.assemble_s)
            if not (r == 0 and workers == 1):
                shutil.rmtree(out)
    med = {w: statistics.median(v) for w, v in rates.items()}
    cpu = {w: statistics.median(v) for w, v in cpu_per_step.items()}
    return {"env": env, "episodes": episodes, "steps_per_s_1w": med[1], "steps_per_s_2w": med[2],
            "scaling_2w": med[2] / med[1],
            # CPU-seconds per step with 1 vs 2 workers: 2x this ratio is the speed-up two idle cores would give
            "cpu_efficiency_2w": cpu[1] / cpu[2], "assemble_s": statistics.median(assemble),
            "root": str(tmp / f"{env.replace('/', '_')}_1_0")}


def bench_loader(root: Path, batch_size: int, workers: int, batches: int, history: int, chunk: int) -> float:
    ds = DemoDataset(root, split="all", history=history, chunk=chunk)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers, collate_fn=collate,
                        persistent_workers=workers > 0, drop_last=True)
    n = 0
    it = iter(loader)
    next(it)  # exclude worker start-up
    t0 = time.perf_counter()
    while n < batches * batch_size:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += len(batch["instruction"])
    rate = n / (time.perf_counter() - t0)
    del it, loader
    return rate


def _generate_rgb(root: Path, episodes: int, compress: bool) -> float:
    """GoToLocal RGB episodes into ``root``; ``compress=False`` writes the Minari file as before (Minari's writer
    alone). Returns the assembly seconds."""
    import vlafoundry.data.generate as gen

    saved = gen.compress_hdf5
    if not compress:
        gen.compress_hdf5 = lambda path: None  # the step this work added, skipped for the 'before' bytes
    try:
        return generate_dataset("babyai/GoToLocal", episodes, root, image="rgb", progress=False).assemble_s
    finally:
        gen.compress_hdf5 = saved


def image_bytes(root: Path) -> dict:
    """Bytes per frame (per recorded step) of a dataset's Minari files and cache."""
    meta = json.loads((root / "vlafoundry.json").read_text())
    steps = meta["counts"]["steps"]
    cache = read_json(root / "cache" / CACHE_META)
    frame = int(np.prod(meta["env"]["spec"]["image_shape"]))
    stored = image_storage(root / meta["minari"]["main_file"])
    cache_images = sum(rec["bytes"] for n, rec in cache["files"].items() if n.startswith("image"))
    return {"steps": steps, "frame_bytes": frame, "minari": _dir_bytes(root / "minari") / steps,
            "minari_frames": stored["stored_bytes"] / steps, "cache": _dir_bytes(root / "cache") / steps,
            "cache_frames": cache_images / steps, "compressed": "image" in cache}


def decode_rate(root: Path, seconds: float = 1.0, batch: int = 256) -> dict:
    """Frames/s one process inflates from the cache (CPU time): in order (what opening a dataset does, each blob
    once) and at random (batches of ``batch`` random steps, what per-batch inflation does: a blob per frame)."""
    cache = root / "cache"
    frames = CompressedFrames(cache, read_json(cache / CACHE_META)["image"])
    rng = np.random.default_rng(0)
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        frames[rng.integers(0, len(frames), batch)]
        n += batch
    rand = n / (time.process_time() - t0)
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        a = int(rng.integers(0, max(1, len(frames) - 4096)))
        rows = np.arange(a, min(a + 4096, len(frames)), dtype=np.int64)
        frames.decode_into(rows, np.empty((len(rows), *frames.frame_shape), dtype=np.uint8))
        n += len(rows)
    return {"sequential": n / (time.process_time() - t0), "random": rand, "group": frames.group}


def train_rate(root: Path, steps: int = 8, warmup: int = 2) -> dict:
    """Samples/s of the preset's training step with a patch (ViT) vision encoder on ``root``'s RGB frames."""
    import dataclasses

    import torch

    from vlafoundry.models.policy import VLAPolicy
    from vlafoundry.train.config import load_config
    from vlafoundry.train.trainer import build_optimizer

    torch.set_num_threads(1)
    cfg = load_config("babyai-gotolocal")
    model_cfg = dataclasses.replace(cfg.model, vision="patch", patch_size=8)
    t0 = time.perf_counter()
    ds = DemoDataset(root, split="train", val_fraction=cfg.data.val_fraction, history=model_cfg.history,
                     chunk=model_cfg.chunk)
    open_s = time.perf_counter() - t0  # includes inflating the split's frames into RAM
    torch.manual_seed(0)
    policy = VLAPolicy.from_dataset(model_cfg, ds)
    policy.train()
    opt = build_optimizer(policy, cfg.train)
    rng = np.random.default_rng(0)
    bs = cfg.train.batch_size
    times = []
    for i in range(warmup + steps):
        t = time.process_time()
        batch = ds.__getitems__(rng.integers(0, len(ds), bs).tolist())
        loss = policy(batch, cfg.loss)[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.train.grad_clip)
        opt.step()
        if i >= warmup:
            times.append(time.process_time() - t)
    return {"samples_per_s": bs / statistics.median(times), "batch": bs, "history": model_cfg.history,
            "open_s": open_s}


def bench_images(episodes: int, tmp: Path, data: str | None = None) -> dict:
    out: dict = {}
    if data is None:
        new, old = tmp / "rgb_new", tmp / "rgb_old"
        out["assemble_s_after"] = _generate_rgb(new, episodes, compress=True)
        out["assemble_s_before"] = _generate_rgb(old, episodes, compress=False)
        before = image_bytes(old)
        before["cache"] += before["frame_bytes"] - before["cache_frames"]  # the raw image.npy it replaced
        before["cache_frames"] = before["frame_bytes"]
        out["before"] = before
    else:
        new = Path(data)
    out["after"] = after = image_bytes(new)
    out["decode_frames_per_s"] = decode_rate(new)
    out["train"] = train = train_rate(new)
    consumed = train["samples_per_s"] * train["history"]  # frames per second the training step reads
    out["decode_over_training"] = out["decode_frames_per_s"]["random"] / consumed
    print(f"\nimages (GoToLocal RGB {after['frame_bytes']} B/frame raw, {after['steps']} steps)"
          f"{'':4}{'Minari B/frame':>16}{'(frames only)':>15}{'cache B/frame':>15}{'(frames only)':>15}")
    rows = ([("before", out["before"])] if "before" in out else []) + [("after", after)]
    for name, r in rows:
        print(f"{name:<54}{r['minari']:>16.0f}{r['minari_frames']:>15.0f}{r['cache']:>15.0f}{r['cache_frames']:>15.0f}")
    if "before" in out:
        b = out["before"]
        print(f"{'ratio (before / after)':<54}{b['minari'] / after['minari']:>16.1f}"
              f"{b['minari_frames'] / after['minari_frames']:>15.1f}{b['cache'] / after['cache']:>15.1f}"
              f"{b['cache_frames'] / after['cache_frames']:>15.1f}")
        total_b, total_a = b["minari"] + b["cache"], after["minari"] + after["cache"]
        print(f"whole dataset: {total_b:.0f} -> {total_a:.0f} B/frame ({total_b / total_a:.1f}x); assembly "
              f"{out['assemble_s_before']:.1f} s -> {out['assemble_s_after']:.1f} s")
    dec = out["decode_frames_per_s"]
    print(f"decode (1 process, {dec['group']} steps a blob): {dec['sequential']:.0f} frames/s in order, "
          f"{dec['random']:.0f} frames/s at random; training (patch ViT, batch {train['batch']}, "
          f"T={train['history']}): {train['samples_per_s']:.0f} samples/s = {consumed:.0f} frames/s; "
          f"random decode / training = {out['decode_over_training']:.0f}x; opening the train split (frames "
          f"inflated into RAM): {train['open_s']:.2f} s")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--babyai-episodes", type=int, default=1000)
    parser.add_argument("--metaworld-episodes", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also time 10,000 GoToLocal episodes with 2 workers")
    parser.add_argument("--image-episodes", type=int, default=400, help="GoToLocal RGB episodes of the image section")
    parser.add_argument("--image-data", default=None, help="an existing RGB dataset for the image section "
                        "(no 'before' row then)")
    parser.add_argument("--images-only", action="store_true", help="run the image section only")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vlafoundry_bench_data_"))
    results: dict = {}
    try:
        results["images"] = bench_images(args.image_episodes, tmp, args.image_data)
        if args.images_only:
            print(json.dumps(results))
            return 0
        gen_rows = [
            bench_generation("babyai/GoToLocal", args.babyai_episodes, args.repeats, tmp),
            bench_generation("metaworld/push", args.metaworld_episodes, args.repeats, tmp),
        ]
        print(f"{'generation':<20}{'episodes':>9}{'steps/s 1w':>12}{'steps/s 2w':>12}{'2w / 1w':>9}"
              f"{'cpu eff 2w':>12}{'assemble s':>12}")
        for row in gen_rows:
            print(f"{row['env']:<20}{row['episodes']:>9}{row['steps_per_s_1w']:>12.0f}{row['steps_per_s_2w']:>12.0f}"
                  f"{row['scaling_2w']:>9.2f}{row['cpu_efficiency_2w']:>12.2f}{row['assemble_s']:>12.2f}")
        print("(2w / 1w is wall-clock and needs two idle cores; cpu eff = CPU-s per step 1w / 2w, so 2 x cpu eff "
              "is the speed-up on two free cores)")
        results["generation"] = [{k: v for k, v in r.items() if k != "root"} for r in gen_rows]

        babyai_root = Path(gen_rows[0]["root"])
        loader_rows = []
        for history, chunk in ((1, 1), (4, 8)):
            rates = {0: [], 2: []}
            for _ in range(args.repeats):
                for w in (0, 2):
                    rates[w].append(bench_loader(babyai_root, 256, w, 120, history, chunk))
            loader_rows.append({"history": history, "chunk": chunk, "batch": 256,
                                "samples_per_s_0w": statistics.median(rates[0]),
                                "samples_per_s_2w": statistics.median(rates[2])})
        print(f"\n{'loader (BabyAI)':<20}{'batch':>7}{'T':>4}{'K':>4}{'samples/s 0w':>15}{'samples/s 2w':>15}")
        for row in loader_rows:
            print(f"{'DemoDataset':<20}{row['batch']:>7}{row['history']:>4}{row['chunk']:>4}"
                  f"{row['samples_per_s_0w']:>15.0f}{row['samples_per_s_2w']:>15.0f}")
        results["loader"] = loader_rows

        meta = json.loads((babyai_root / "vlafoundry.json").read_text())
        n_eps = meta["counts"]["episodes"]
        minari_b = _dir_bytes(babyai_root / "minari") * 1000 / n_eps
        cache_b = _dir_bytes(babyai_root / "cache") * 1000 / n_eps
        mw_root = Path(gen_rows[1]["root"])
        mw_eps = json.loads((mw_root / "vlafoundry.json").read_text())["counts"]["episodes"]
        mw_minari_b = _dir_bytes(mw_root / "minari") * 1000 / mw_eps
        print(f"\nload average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        print(f"\nbytes per 1,000 episodes: BabyAI GoToLocal Minari {minari_b / 1e6:.1f} MB + cache {cache_b / 1e6:.2f} MB; "
              f"Meta-World push Minari {mw_minari_b / 1e6:.1f} MB")
        results["load_average"] = os.getloadavg()[0]
        results["bytes_per_1000_episodes"] = {"babyai_minari": int(minari_b), "babyai_cache": int(cache_b),
                                              "metaworld_push_minari": int(mw_minari_b)}

        if args.full:
            t0 = time.perf_counter()
            res = generate_dataset("babyai/GoToLocal", 10_000, tmp / "big", workers=2, progress=False)
            wall = time.perf_counter() - t0
            print(f"\n10,000 GoToLocal episodes, 2 workers: {wall:.1f} s (roll-out {res.rollout_s:.1f} s, "
                  f"assemble {res.assemble_s:.1f} s, {res.steps_generated} steps)")
            results["ten_thousand_episodes_2w_s"] = wall

        results["targets"] = {
            "generation_scaling_ge_1.7": all(r["scaling_2w"] >= 1.7 for r in gen_rows),
            "loader_ge_20000_one_worker": loader_rows[0]["samples_per_s_0w"] >= 20_000,
            "image_decode_faster_than_training": results["images"]["decode_over_training"] > 1,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
