"""Meta-World camera frames per second on a CPU: env step + frame(s), by resolution, camera count and workers.

    python bench/render.py                 # ~3-5 minutes on 2 cores; writes bench/results/render.json
    python bench/render.py --steps 100 --sizes 64

Each configuration plays ``--steps`` steps of ``metaworld/<task>`` with ``image="rgb"`` (the scripted expert acting,
a reset when an episode ends) in each of ``workers`` spawned processes, after one warm-up episode reset; frames/s
is camera frames rendered (steps x cameras, summed over workers) per wall-clock second of the slowest worker, CPU
ms/frame the process CPU time (llvmpipe's threads included) per frame. The baseline is MuJoCo's default offscreen
settings (4x multisampling, 4096 shadow map, floor reflection, skybox) measured in this process, one worker, one
camera; the ladder adds the fast settings of :class:`vlafoundry.envs.render.FastRenderer` one at a time (render
only, no env step). The machine is shared: wall-clock rates move with other jobs, CPU ms/frame much less.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.envs.render import rendering_error


def _play(job: tuple[str, int, int, str, int], barrier: Any = None, results: Any = None) -> dict[str, float]:
    """One worker: build the env, warm up, wait for the others, then time ``steps`` steps (expert actions,
    frames in every observation)."""
    task, size, steps, camera, seed = job
    from vlafoundry.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv(task, image="rgb", camera=camera, image_size=size)
    env.reset(seed=seed)
    k = len(env.cameras)
    if barrier is not None:
        barrier.wait()
    start = time.monotonic()  # system-wide clock: comparable across the workers
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.expert_action())
        if terminated or truncated:
            seed += 1
            env.reset(seed=seed)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    env.close()
    out = {"frames": steps * k, "steps": steps, "wall_s": wall, "cpu_s": cpu, "start": start, "end": start + wall}
    if results is not None:
        results.put(out)
    return out


def measure(task: str, size: int, cameras: int, workers: int, steps: int, ctx: Any) -> dict[str, Any]:
    camera = ",".join(["corner2", "corner3"][:cameras])
    jobs = [(task, size, steps, camera, 100 * w) for w in range(workers)]
    if workers == 1:
        results = [_play(jobs[0])]
    else:  # all workers start timing together; the rate is over the span from first start to last end
        barrier, queue = ctx.Barrier(workers), ctx.Queue()
        procs = [ctx.Process(target=_play, args=(job, barrier, queue)) for job in jobs]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
    frames = sum(r["frames"] for r in results)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    cpu = sum(r["cpu_s"] for r in results)
    return {"size": size, "cameras": cameras, "workers": workers, "frames": frames,
            "frames_per_s": frames / wall, "steps_per_s": sum(r["steps"] for r in results) / wall,
            "cpu_ms_per_frame": 1e3 * cpu / frames}


def settings_ladder(task: str, size: int, frames: int) -> list[dict[str, Any]]:
    """Render-only frames/s of one camera with MuJoCo's defaults, then each fast setting added in turn."""
    import mujoco

    from vlafoundry.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv(task)  # symbolic: no renderer of its own
    env.reset(seed=0)
    model, data = env.unwrapped.model, env.unwrapped.data
    defaults = (int(model.vis.quality.offsamples), int(model.vis.quality.shadowsize))
    flag = mujoco.mjtRndFlag
    steps = [("MuJoCo defaults", {}), ("+ multisampling off", {"offsamples": 0}),
             ("+ shadows off", {"offsamples": 0, "shadowsize": 0}),
             ("+ reflection off", {"offsamples": 0, "shadowsize": 0, "reflection": 0}),
             ("+ skybox off (FastRenderer)", {"offsamples": 0, "shadowsize": 0, "reflection": 0, "skybox": 0})]
    rows = []
    for name, s in steps:
        model.vis.quality.offsamples = s.get("offsamples", defaults[0])
        model.vis.quality.shadowsize = s.get("shadowsize", defaults[1])
        renderer = mujoco.Renderer(model, size, size)
        renderer.scene.flags[flag.mjRND_REFLECTION] = s.get("reflection", 1)
        renderer.scene.flags[flag.mjRND_SKYBOX] = s.get("skybox", 1)
        n = frames if s else max(5, frames // 10)  # the defaults are ~10x slower
        renderer.update_scene(data, camera="corner2")
        renderer.render()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(n):
            renderer.update_scene(data, camera="corner2")
            renderer.render()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        renderer.close()
        rows.append({"settings": name, "size": size, "frames_per_s": n / wall, "cpu_ms_per_frame": 1e3 * cpu / n})
    env.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="pick-place")
    parser.add_argument("--sizes", default="64,96,128")
    parser.add_argument("--cameras", default="1,2")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--steps", type=int, default=200, help="steps per worker per configuration")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repeats; medians reported")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "render.json"))
    args = parser.parse_args()
    error = rendering_error()
    if error:
        raise SystemExit(error)
    sizes = [int(s) for s in args.sizes.split(",")]
    cams = [int(c) for c in args.cameras.split(",")]
    workers = [int(w) for w in args.workers.split(",")]
    ctx = mp.get_context("spawn")  # never fork a process holding GL contexts

    ladder = settings_ladder(args.task, 64, args.steps)
    default_fps = {s: settings_ladder_default(args.task, s, args.steps) for s in sizes}
    runs: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
    for _ in range(args.repeats):
        for size in sizes:
            for k in cams:
                for w in workers:
                    runs.setdefault((size, k, w), []).append(measure(args.task, size, k, w, args.steps, ctx))
    rows = []
    for (size, k, w), rs in runs.items():
        row = dict(rs[0])
        for key in ("frames_per_s", "steps_per_s", "cpu_ms_per_frame"):
            row[key] = statistics.median(r[key] for r in rs)
        row["vs_mujoco_defaults"] = row["frames_per_s"] / default_fps[size]["frames_per_s"]
        rows.append(row)

    print(f"Meta-World {args.task}, env step + corner2(+corner3) frames, {args.steps} steps per worker, "
          f"MUJOCO_GL={os.environ.get('MUJOCO_GL')}, cpus={os.cpu_count()}, load average "
          f"{os.getloadavg()[0]:.1f} (shared machine: wall-clock rates are noisy)")
    print(f"{'settings (render only, 64x64, 1 camera)':<44}{'frames/s':>10}{'CPU ms/frame':>14}")
    for r in ladder:
        print(f"{r['settings']:<44}{r['frames_per_s']:>10.1f}{r['cpu_ms_per_frame']:>14.1f}")
    print()
    print(f"{'size':>6}{'cams':>6}{'workers':>9}{'frames/s':>10}{'steps/s':>9}{'CPU ms/frame':>14}"
          f"{'x defaults':>12}")
    for r in rows:
        print(f"{r['size']:>6}{r['cameras']:>6}{r['workers']:>9}{r['frames_per_s']:>10.1f}{r['steps_per_s']:>9.1f}"
              f"{r['cpu_ms_per_frame']:>14.1f}{r['vs_mujoco_defaults']:>12.1f}")
    result = {"task": args.task, "steps_per_worker": args.steps, "repeats": args.repeats,
              "mujoco_gl": os.environ.get("MUJOCO_GL"), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "settings_ladder": ladder, "mujoco_defaults": list(default_fps.values()), "runs": rows,
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    print(json.dumps({"frames_per_s_64px_1cam": {r["workers"]: round(r["frames_per_s"], 1) for r in rows
                                                 if r["size"] == 64 and r["cameras"] == 1}}))


def settings_ladder_default(task: str, size: int, frames: int) -> dict[str, Any]:
    """Env step + one corner2 frame per step with MuJoCo's default offscreen settings (the baseline)."""
    import mujoco

    from vlafoundry.envs.metaworld import MetaWorldEnv

    env = MetaWorldEnv(task)
    env.reset(seed=0)
    model, data = env.unwrapped.model, env.unwrapped.data
    renderer = mujoco.Renderer(model, size, size)  # MuJoCo's defaults: the model's own quality settings
    out = np.empty((size, size, 3), np.uint8)
    n = max(5, frames // 10)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        env.step(env.expert_action())
        renderer.update_scene(data, camera="corner2")
        renderer.render(out=out)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    renderer.close()
    env.close()
    return {"size": size, "frames_per_s": n / wall, "cpu_ms_per_frame": 1e3 * cpu / n}


if __name__ == "__main__":
    main()
