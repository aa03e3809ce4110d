"""Demonstration data throughput: generation steps/s per worker count, loader samples/s, bytes on disk.

    python bench/data.py            # ~2-3 minutes on 2 cores
    python bench/data.py --full     # also times 10,000 BabyAI GoToLocal episodes with 2 workers

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--babyai-episodes", type=int, default=1000)
    parser.add_argument("--metaworld-episodes", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also time 10,000 GoToLocal episodes with 2 workers")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="vlafoundry_bench_data_"))
    results: dict = {}
    try:
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
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
