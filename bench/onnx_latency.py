"""ONNX export of the quickstart-sized policy: accuracy against PyTorch and acting latency (docs/serving.md).

    python bench/onnx_latency.py [--run RUN] [--rows 1,16,64] [--repeats 200] [--threads 1] [--json-only]

Exports the acting path (``vlafoundry.serving.onnx_export``) of a trained run (``--run``) or, without one, of the
babyai-gotolocal preset network (GRU memory) built on 20 generated episodes with random weights; checks it with
onnxruntime on 16 held-out episodes x 12 steps (evaluation seeds, memory carried); then times, per batch size, the
network alone (the exported graph in onnxruntime vs the same graph in PyTorch) and a whole acting call
(``select_action``: validation, tokenisation, memory, picking) of the PyTorch policy vs the onnxruntime-backed
:class:`~vlafoundry.serving.onnx_runtime.OnnxPolicy`. Medians of ``--repeats`` calls. Table + one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from _policies import quickstart_policy  # bench/_policies.py (this folder is on sys.path as the script's own)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default=None)
    ap.add_argument("--rows", default="1,16,64")
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json-only", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from vlafoundry.serving.onnx_export import (
        export_onnx,
        heldout_observations,
        latency,
        median_ms,
    )
    from vlafoundry.serving.onnx_runtime import OnnxPolicy

    policy, what = quickstart_policy(args.run)
    obs = heldout_observations(policy, policy.spec.env, rows=16, steps=12)
    path = Path(tempfile.mkdtemp(prefix="vlafoundry-bench-")) / "policy.onnx"
    report = export_onnx(policy, path, obs)
    onnx_policy = OnnxPolicy(policy, path, threads=args.threads)
    load0 = os.getloadavg()[0]
    rows = []
    for n in (int(x) for x in args.rows.split(",")):
        o = {k: (v[:n] if len(v) >= n else np.concatenate([v] * (n // len(v) + 1))[:n]) if not isinstance(v, list)
             else (v * (n // len(v) + 1))[:n] for k, v in obs[0].items()}
        net = latency(policy, path, o, repeats=args.repeats)
        policy.reset()
        onnx_policy.reset()
        rows.append({"rows": n, "graph_torch_ms": net["torch_ms"], "graph_onnxruntime_ms": net["onnxruntime_ms"],
                     "select_action_torch_ms": median_ms(lambda o=o: policy.select_action(o), args.repeats),
                     "select_action_onnx_ms": median_ms(lambda o=o: onnx_policy.select_action(o), args.repeats)})
    load1 = os.getloadavg()[0]
    result = {"bench": "onnx", "policy": what, "threads": args.threads, "cpus": os.cpu_count(),
              "loadavg_1min_before_after": [load0, load1], "max_abs_diff": report.max_abs_diff,
              "action_agreement": report.action_agreement, "checked_rows": report.checked_rows,
              "checked_steps": report.checked_steps, "latency": rows}
    if not args.json_only:
        print(f"policy: {what}\nmax abs difference (logits and GRU state, {report.checked_steps} steps x 16 held-out "
              f"episodes, memory carried): {report.max_abs_diff:.3g}; argmax actions agree on "
              f"{report.action_agreement:.1%} of rows")
        print(f"{'rows':>5} {'graph torch':>12} {'graph ort':>10} {'act torch':>10} {'act onnx':>9}   (median ms, "
              f"{args.threads} thread)")
        for r in rows:
            print(f"{r['rows']:>5} {r['graph_torch_ms']:>12.2f} {r['graph_onnxruntime_ms']:>10.2f} "
                  f"{r['select_action_torch_ms']:>10.2f} {r['select_action_onnx_ms']:>9.2f}")
        print(f"load average (1 min) before/after: {load0:.2f} / {load1:.2f} on {os.cpu_count()} CPUs")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
