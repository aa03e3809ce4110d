"""LeRobot v3.0 reader speed vs the rate training consumes frames.

    python bench/lerobot.py                 # ~40 s on 2 cores: 200 symbolic + 40 RGB BabyAI episodes
    python bench/lerobot.py --episodes 1000 --rgb-episodes 200

Per dataset: export time; read frames/s of the LeRobot reader (Parquet + video decode, the pass that builds the
training cache) beside the Minari reader on the same episodes; PyAV decode frames/s alone (RGB); and the samples/s
a training run of the babyai-gotolocal preset consumes (from the cache: the reader runs once per dataset, training
reads the cache). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from vlafoundry.data import generate_dataset
from vlafoundry.data.lerobot import iterate_lerobot_episodes, load_info
from vlafoundry.data.lerobot_export import export_dataset_lerobot
from vlafoundry.data.source import iterate_source_episodes, resolve_source
from vlafoundry.data.video import decode_video


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_dataset(root: Path, out: Path) -> dict:
    (_, _note), export_s = _timed(lambda: export_dataset_lerobot(root, out))
    src = resolve_source(root)
    list(iterate_source_episodes(src))  # warm-up
    minari_eps, minari_s = _timed(lambda: list(iterate_source_episodes(src)))
    frames = sum(len(e["action"]) for e in minari_eps)
    info = load_info(out)
    list(iterate_lerobot_episodes(info, None, "x"))  # warm-up (imports, codec)
    _, lerobot_s = _timed(lambda: list(iterate_lerobot_episodes(info, None, "x")))
    row = {"image": src.metadata["env"]["image"], "episodes": len(minari_eps), "frames": frames,
           "export_s": export_s, "minari_read_fps": frames / minari_s, "lerobot_read_fps": frames / lerobot_s}
    videos = sorted(out.glob("videos/*/chunk-*/file-*.mp4"))
    if videos:
        decode_video(videos[0])  # warm-up: the first decode loads the codec
        decoded, decode_s = _timed(lambda: sum(len(decode_video(v)[0]) for v in videos))
        row["video_decode_fps"] = decoded / decode_s
    return row


def training_rate(root: Path, tmp: Path) -> float:
    from vlafoundry.train.config import load_config
    from vlafoundry.train.trainer import Trainer

    cfg = load_config("babyai-gotolocal", ["--train.steps", "6", "--train.warmup_steps", "1", "--train.batch_size", "64",
                                           "--train.checkpoint_every", "6", "--train.eval_every", "6",
                                           "--train.log_every", "6", "--train.progress", "false", "--data.path",
                                           str(root), "--data.val_fraction", "0.05"])
    return float(Trainer(cfg, tmp / "run", dataset_root=root).fit()["samples_per_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--rgb-episodes", type=int, default=40)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows = []
        for image, n in (("symbolic", args.episodes), ("rgb", args.rgb_episodes)):
            root = tmp / image
            generate_dataset("babyai/GoToLocal", n, root, workers=1, seed=0, image=image, progress=False)
            rows.append(bench_dataset(root, tmp / f"{image}_lerobot"))
        train_sps = training_rate(tmp / "symbolic_lerobot", tmp)
    print(f"{'BabyAI GoToLocal':<18}{'episodes':>9}{'frames':>8}{'export s':>10}{'Minari fr/s':>13}"
          f"{'LeRobot fr/s':>14}{'decode fr/s':>13}")
    for r in rows:
        dec = f"{r['video_decode_fps']:>13.0f}" if "video_decode_fps" in r else f"{'-':>13}"
        print(f"{r['image']:<18}{r['episodes']:>9}{r['frames']:>8}{r['export_s']:>10.2f}{r['minari_read_fps']:>13.0f}"
              f"{r['lerobot_read_fps']:>14.0f}{dec}")
    print(f"training (babyai-gotolocal preset, batch 64, from the cache of the LeRobot folder): {train_sps:.0f} samples/s")
    print(f"load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(json.dumps({"bench": "lerobot", "datasets": rows, "train_samples_per_s": train_sps,
                      "loadavg": os.getloadavg()[0]}))


if __name__ == "__main__":
    main()
