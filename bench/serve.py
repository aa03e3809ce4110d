"""Policy-server latency and throughput on loopback (docs/serving.md).

    python bench/serve.py [--run RUN] [--requests 1000] [--seconds 5] [--clients 1,4,16] [--server-threads 1]
        [--batch-window-ms 2] [--backend torch|onnx] [--json-only]

The server runs in its own process (as `vlafoundry serve` does) with the quickstart-sized policy: a trained run
(``--run``) or, without one, the babyai-gotolocal preset network (GRU memory) built on 20 generated episodes with
random weights (same acting cost). Clients are threads of this process, each a ``PolicyClient`` acting for ONE env
row per request (the hardest case for throughput) with valid random BabyAI observations.

Measures: round-trip latency p50/p99 of one client (``--requests`` after 50 warm-up requests), the in-process
``select_action`` time of one row for reference, and throughput (actions/s) with 1/4/16 concurrent clients over
``--seconds`` each, with the server's mean rows per ``select_action`` batch. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from _policies import quickstart_policy  # bench/_policies.py (this folder is on sys.path as the script's own)


def _observation(rng: np.random.Generator, n: int = 1) -> dict[str, Any]:
    image = np.stack([rng.integers(0, hi, size=(n, 7, 7), dtype=np.uint8) for hi in (11, 6, 3)], axis=-1)
    return {"image": image, "state": rng.normal(size=(n, 4)).astype(np.float32),
            "instruction": ["go to the red ball"] * n}


def _serve(run: str | None, threads: int, window: float, backend: str, conn: Any) -> None:
    import tempfile

    import torch

    from vlafoundry.serving.server import PolicyServer, ServerConfig

    torch.set_num_threads(threads)
    policy, what = quickstart_policy(run)
    if backend == "onnx":
        from vlafoundry.serving.onnx_export import export_onnx, heldout_observations
        from vlafoundry.serving.onnx_runtime import OnnxPolicy

        path = Path(tempfile.mkdtemp(prefix="vlafoundry-bench-")) / "policy.onnx"
        export_onnx(policy, path, heldout_observations(policy, "babyai/GoToLocal", rows=4, steps=4))
        policy = OnnxPolicy(policy, path, threads=threads)
    rng = np.random.default_rng(0)
    obs = _observation(rng)
    policy.reset()
    for _ in range(50):
        policy.select_action(obs)
    ts = []
    for _ in range(300):
        t0 = time.perf_counter()
        policy.select_action(obs)
        ts.append(time.perf_counter() - t0)
    server = PolicyServer(policy, ServerConfig(port=0, batch_window_ms=window))
    import asyncio

    asyncio.run(server.serve(on_ready=lambda s: conn.send((s.port, what, float(np.median(ts) * 1e3)))))


def _latency(url: str, n: int) -> list[float]:
    from vlafoundry.serving.client import PolicyClient

    rng = np.random.default_rng(1)
    obs = [_observation(rng) for _ in range(64)]
    with PolicyClient(url) as c:
        c.reset()
        for i in range(50):
            c.select_action(obs[i % 64])
        ts = []
        for i in range(n):
            t0 = time.perf_counter()
            c.select_action(obs[i % 64])
            ts.append(time.perf_counter() - t0)
    return ts


def _throughput(url: str, clients: int, seconds: float) -> dict[str, float]:
    from vlafoundry.serving.client import PolicyClient

    conns = [PolicyClient(url) for _ in range(clients)]
    for c in conns:
        c.reset()
        c.select_action(_observation(np.random.default_rng(0)))
    h0 = conns[0].health()
    counts = [0] * clients
    lat: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()
    start = threading.Barrier(clients + 1)

    def loop(k: int) -> None:
        rng = np.random.default_rng(k)
        obs = [_observation(rng) for _ in range(16)]
        start.wait()
        i = 0
        while not stop.is_set():
            t0 = time.perf_counter()
            conns[k].select_action(obs[i % 16])
            lat[k].append(time.perf_counter() - t0)
            i += 1
        counts[k] = i

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    h1 = conns[0].health()
    for c in conns:
        c.close()
    all_lat = np.concatenate([np.asarray(x) for x in lat]) * 1e3
    return {"clients": clients, "actions_per_s": sum(counts) / elapsed,
            "p50_ms": float(np.percentile(all_lat, 50)), "p99_ms": float(np.percentile(all_lat, 99)),
            "rows_per_batch": (h1["served"] - h0["served"]) / max(h1["batches"] - h0["batches"], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None, help="a trained run (default: the preset network, random weights)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--server-threads", type=int, default=1)
    ap.add_argument("--batch-window-ms", type=float, default=2.0)
    ap.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args()
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(args.run, args.server_threads, args.batch_window_ms,
                                                 args.backend, child), daemon=True)
    proc.start()
    try:
        if not parent.poll(300):
            raise RuntimeError("server did not start within 300 s")
        port, what, inproc_ms = parent.recv()
        url = f"ws://127.0.0.1:{port}"
        load0 = os.getloadavg()[0]
        ts = np.asarray(_latency(url, args.requests)) * 1e3
        rows = [_throughput(url, int(c), args.seconds) for c in args.clients.split(",")]
        load1 = os.getloadavg()[0]
    finally:
        proc.terminate()
        proc.join(10)
    result = {"bench": "serve", "backend": args.backend, "policy": what, "cpus": os.cpu_count(), "server_threads": args.server_threads,
              "batch_window_ms": args.batch_window_ms, "loadavg_1min_before_after": [load0, load1],
              "in_process_select_action_ms": inproc_ms, "one_client": {
                  "requests": args.requests, "p50_ms": float(np.percentile(ts, 50)),
                  "p99_ms": float(np.percentile(ts, 99)), "mean_ms": float(ts.mean())},
              "throughput": rows}
    if not args.json_only:
        print(f"policy: {what}\nbackend: {args.backend}\nin-process select_action (1 row): {inproc_ms:.2f} ms")
        o = result["one_client"]
        print(f"one client, {args.requests} round trips: p50 {o['p50_ms']:.2f} ms  p99 {o['p99_ms']:.2f} ms")
        print(f"{'clients':>8} {'actions/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'rows/batch':>10}")
        for r in rows:
            print(f"{r['clients']:>8} {r['actions_per_s']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                  f"{r['rows_per_batch']:>10.2f}")
        print(f"load average (1 min) before/after: {load0:.2f} / {load1:.2f} on {os.cpu_count()} CPUs")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
