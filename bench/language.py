"""Benchmark: the cost of the pretrained MiniLM language encoder in training and acting, with and without its
per-instruction feature cache, against the from-scratch word tokenizer + text transformer.

Four policies of the ``babyai-gotolocal-minilm`` / ``babyai-gotolocal`` presets are built on the same GoToLocal
demonstrations in this process: ``scratch`` (word tokenizer, 1 text layer), ``minilm`` (frozen MiniLM, cache on) and
``minilm-nocache`` (the same with ``cache_size = 0``: MiniLM runs on every batch), and ``minilm-nogrounding`` (the
preset without its per-attribute grounding and grounding loss, ``model.grounding none``, ``loss.grounding 0``). Timed, interleaved in rounds
(medians):

* training: one optimiser step (forward with the BC loss, backward, AdamW) on the same batches of whole episodes;
* acting: ``select_action`` on a batch of ``--envs`` observations (one closed-loop step of that many envs).

Ratios are against ``scratch`` measured in the same rounds. The load average before and after is printed and
recorded (the machine is shared).

    python bench/language.py [--episodes 1000] [--batch 48] [--envs 64] [--rounds 5] [--threads 1] [--quick]

Prints a table and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import numpy as np
import torch


def _policy(preset: str, ds: Any, cache: bool, overrides: tuple[str, ...] = ()) -> Any:
    from vlafoundry.models import make_policy
    from vlafoundry.train.config import load_config

    cfg = load_config(preset, list(overrides))
    policy = make_policy(cfg.model, ds, cfg.loss)
    if not cache:
        policy.text_encoder.cache_size = 0
    return policy, cfg


def _act_batch(ds: Any, envs: int, rng: np.random.Generator) -> dict[str, Any]:
    items = [ds[int(i)] for i in rng.integers(0, len(ds), envs)]
    obs: dict[str, Any] = {"image": np.stack([np.asarray(it["image"])[0] for it in items]),
                           "state": np.stack([np.asarray(it["state"])[0] for it in items]),
                           "instruction": [it["instruction"] for it in items]}  # fmt: skip
    for m in ("image", "state", "instruction"):
        obs[f"{m}_present"] = np.ones(envs, dtype=bool)
    obs["task"] = ["babyai/GoToLocal"] * envs
    return obs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=1000, help="demonstrations (cached dataset of that size)")
    ap.add_argument("--batch", type=int, default=48, help="episodes per training batch (the presets' 48)")
    ap.add_argument("--envs", type=int, default=64, help="observations per acting call")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="training steps / acting calls per round and policy")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="2 rounds of 3 steps (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps = 2, 3
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    from vlafoundry.data import make_dataset
    from vlafoundry.train.config import load_config
    from vlafoundry.train.distributed import DistInfo
    from vlafoundry.train.trainer import ensure_dataset

    load0 = os.getloadavg()[0]
    cfg = load_config("babyai-gotolocal", ["--data.episodes", str(args.episodes)])
    root = ensure_dataset(cfg, DistInfo(), progress=False)
    ds = make_dataset(root, split="train", val_fraction=0.05, split_seed=0, **cfg.model.dataset_view())
    names = ("scratch", "minilm-nogrounding", "minilm", "minilm-nocache")
    nogrounding = ("--model.grounding", "none", "--loss.grounding", "0", "--pretrain.loss.grounding", "0")
    built = {"scratch": _policy("babyai-gotolocal", ds, True), "minilm": _policy("babyai-gotolocal-minilm", ds, True),
             "minilm-nogrounding": _policy("babyai-gotolocal-minilm", ds, True, nogrounding),
             "minilm-nocache": _policy("babyai-gotolocal-minilm", ds, False)}  # fmt: skip
    opts = {n: torch.optim.AdamW([p for p in built[n][0].parameters() if p.requires_grad], lr=1e-4) for n in names}
    rng = np.random.default_rng(0)
    train_batches = [ds.__getitems__(rng.integers(0, len(ds), args.batch).tolist()) for _ in range(args.steps)]
    act_batches = [_act_batch(ds, args.envs, rng) for _ in range(args.steps)]
    train_s: dict[str, list[float]] = {n: [] for n in names}
    act_s: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for n in names:
            policy, pcfg = built[n]
            policy.train()
            t0 = time.perf_counter()
            for b in train_batches:
                loss, _ = policy(b, pcfg.loss)
                opts[n].zero_grad(set_to_none=True)
                loss.backward()
                opts[n].step()
            train_s[n].append((time.perf_counter() - t0) / len(train_batches))
            policy.eval()
            t0 = time.perf_counter()
            with torch.no_grad():
                for ob in act_batches:
                    policy.reset()
                    policy.select_action(ob)
            act_s[n].append((time.perf_counter() - t0) / len(act_batches))
    load1 = os.getloadavg()[0]
    rows = []
    for n in names:
        tr, ac = statistics.median(train_s[n][1:] or train_s[n]), statistics.median(act_s[n][1:] or act_s[n])
        enc = getattr(built[n][0], "text_encoder", None)
        hits = getattr(enc, "cache_hits", None)
        misses = getattr(enc, "cache_misses", None)
        rows.append({"policy": n, "train_step_ms": tr * 1e3, "act_ms": ac * 1e3, "cache_hits": hits,
                     "cache_misses": misses})  # fmt: skip
    base = rows[0]
    for r in rows:
        r["train_ratio"] = r["train_step_ms"] / base["train_step_ms"]
        r["act_ratio"] = r["act_ms"] / base["act_ms"]
    print(f"language encoder cost, GoToLocal, train batch {args.batch} episodes, act batch {args.envs} envs, "
          f"{args.threads} thread(s), medians of {args.rounds} rounds x {args.steps} (first round dropped), "
          f"load {load0:.2f} -> {load1:.2f}")
    print(f"{'policy':<16} {'train step ms':>14} {'x scratch':>10} {'act ms':>9} {'x scratch':>10} {'cache hit/miss':>15}")
    for r in rows:
        cache = f"{r['cache_hits']}/{r['cache_misses']}" if r["cache_hits"] is not None else "-"
        print(f"{r['policy']:<16} {r['train_step_ms']:>14.1f} {r['train_ratio']:>10.2f} {r['act_ms']:>9.2f} "
              f"{r['act_ratio']:>10.2f} {cache:>15}")
    print(json.dumps({"bench": "language", "episodes": args.episodes, "batch": args.batch, "envs": args.envs,
                      "threads": args.threads, "rounds": args.rounds, "steps": args.steps, "load_before": load0,
                      "load_after": load1, "rows": rows}))  # fmt: skip


if __name__ == "__main__":
    main()
