"""Does alignment pretraining align anything? Short ``vlafoundry pretrain`` runs, measured on held-out episodes.

For each variant (a preset plus dotted overrides, on a dataset) this runs the preset's pretraining phase with the
trainer's own objects (dataset split, episode sampler, policy, AdamW, learning-rate schedule) for ``--steps`` steps
and reports:

* ``con``: the training contrastive loss (mean of the last 20 steps) against its ``chance`` (ln of the aligned
  frames per batch: what uniform similarities give) and its ``floor`` (the mean over rows of ln(#positives in the
  batch): the loss of a model that puts all its mass, uniformly, on the frames with the row's instruction);
* ``vis_grad``: the vision encoder's gradient norm at the first step (does the loss reach the pixels?);
* held-out image->text retrieval over the dataset's instructions (``r@1``, ``r@5``; chance 1/I and 5/I) and over
  targets (``tgt@1``: the top instruction names the frame's target, ignoring "a"/"the"; chance 2/I for BabyAI),
  on every held-out frame and on each episode's last frame;
* held-out ITM accuracy on balanced pairs: each held-out frame with its own instruction (``itm_pos``) and with an
  instruction naming another target (``itm_neg``); ``itm_bal`` is their mean (chance 0.5 whatever the head's bias).

    OMP_NUM_THREADS=1 python bench/alignment.py --data /work/data/gotolocal-rgb-5000 --preset babyai-gotolocal-rgb \
        [--steps 200] [--variant NAME:--pretrain.loss.align_last=1 ...] [--out bench/results/alignment.json]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlafoundry.nn.fusion import masked_mean_pool
from vlafoundry.train.config import load_config
from vlafoundry.train.trainer import Trainer, lr_factor

_ARTICLE = re.compile(r"\b(a|an|the)\b\s*")


def target_of(instruction: str) -> str:
    """The instruction without articles: "go to a red ball" and "go to the red ball" name one target."""
    return _ARTICLE.sub("", instruction).strip()


def _vision_grad_norm(policy: Any) -> float:
    grads = [p.grad.norm() for p in policy.vision_encoder.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _floor_and_chance(policy: Any, batch: dict[str, Any], loss_cfg: Any) -> tuple[float, float]:
    """(floor, chance) of the contrastive loss on this batch's aligned rows."""
    with torch.no_grad():
        b = policy.prepare(batch)
        ids = policy.pair_ids(b)
        keep = policy.alignment_rows(b, loss_cfg)
        if keep is not None:
            ids = ids[keep]
        pos = (ids[:, None] == ids[None, :]).sum(1).float()
        return float(pos.log().mean()), math.log(len(ids))


@torch.no_grad()
def heldout(policy: Any, ds: Any, max_episodes: int = 250, seed: int = 0) -> dict[str, float]:
    """Retrieval and balanced ITM accuracy on the held-out split's frames (eval mode)."""
    policy.eval()
    instructions = list(ds.instructions)
    targets = [target_of(s) for s in instructions]
    lang, mask = policy.encode_language(instructions)  # (I, L, D), (I, L)
    lang_p = masked_mean_pool(lang, mask)  # (I, D)
    lt = torch.nn.functional.normalize(policy.instr_embed(lang_p), dim=-1)  # (I, E)
    rng = np.random.default_rng(seed)
    n_ep = min(len(ds), max_episodes)
    rows: dict[str, list] = {"r1": [], "r5": [], "t1": [], "last": [], "pos": [], "neg": []}
    for start in range(0, n_ep, 32):
        batch = ds.__getitems__(list(range(start, min(start + 32, n_ep))))
        b = policy.prepare(batch)
        enc = policy.encode(b)
        obs_p = policy.pooled_observation(enc)  # (N, D)
        ot = torch.nn.functional.normalize(policy.obs_embed(obs_p), dim=-1)  # (N, E)
        truth = torch.tensor([instructions.index(s) for s in b["instruction"]])  # (N,)
        rank = (ot @ lt.T).argsort(dim=-1, descending=True)  # (N, I)
        rows["r1"] += (rank[:, 0] == truth).tolist()
        rows["r5"] += (rank[:, :5] == truth[:, None]).any(1).tolist()
        rows["t1"] += [targets[int(r)] == targets[int(t)] for r, t in zip(rank[:, 0], truth)]
        r, p, nb, _ = b["seq"]
        length = torch.bincount(r, minlength=nb)
        rows["last"] += (p == length[r] - 1).tolist()
        # balanced ITM: own instruction vs one naming another target
        neg = []
        for t in truth.tolist():
            while True:
                j = int(rng.integers(len(instructions)))
                if targets[j] != targets[t]:
                    break
            neg.append(j)
        heads = policy.pretrain_heads
        rows["pos"] += (heads.itm_logits(obs_p, lang_p[truth]).argmax(-1) == 1).tolist()
        rows["neg"] += (heads.itm_logits(obs_p, lang_p[torch.tensor(neg)]).argmax(-1) == 0).tolist()
    policy.train()
    last = np.array(rows["last"], dtype=bool)
    out: dict[str, float] = {"frames": len(last), "instructions": len(instructions),
                             "chance_r1": 1 / len(instructions), "chance_r5": min(1.0, 5 / len(instructions)),
                             "chance_t1": len(instructions) / len(set(targets)) / len(instructions)}
    for k in ("r1", "r5", "t1"):
        v = np.array(rows[k], dtype=float)
        out[k] = float(v.mean())
        out[f"{k}_last"] = float(v[last].mean())
    out["itm_pos"] = float(np.mean(rows["pos"]))
    out["itm_neg"] = float(np.mean(rows["neg"]))
    out["itm_bal"] = (out["itm_pos"] + out["itm_neg"]) / 2
    return out


def run_variant(preset: str, data: Path, overrides: list[str], steps: int, tmp: Path) -> dict[str, Any]:
    cfg = load_config(preset, ["--pretrain.steps", str(steps), "--train.progress", "false", *overrides])
    torch.manual_seed(cfg.train.seed)
    tr = Trainer(cfg, tmp, phase="pretrain", dataset_root=data, resume=False)
    policy, opt, lc = tr.policy, tr.opt_cfg, tr.loss_cfg
    policy.train()
    log: list[dict[str, float]] = []
    vis_grad = None
    t0 = time.perf_counter()
    for step in range(steps):
        batch = tr.train_ds.__getitems__(tr.sampler.next_batch())
        for g in tr.optimizer.param_groups:
            g["lr"] = opt.lr * lr_factor(step, opt)
        loss, m = policy(batch, lc)
        tr.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if vis_grad is None:
            vis_grad = _vision_grad_norm(policy)
        if opt.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(policy.parameters(), opt.grad_clip)
        tr.optimizer.step()
        if step >= steps - 20:
            floor, chance = _floor_and_chance(policy, batch, lc)
            log.append({k: float(v) for k, v in m.items()} | {"floor": floor, "chance": chance})
    res = {k: float(np.mean([r[k] for r in log if k in r])) for k in log[-1]}
    res["vis_grad"] = vis_grad
    res["logit_scale"] = float(policy.contrastive.logit_scale.detach())
    res["train_s"] = time.perf_counter() - t0
    res.update(heldout(policy, tr.val_ds))
    return res


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, action="append", help="dataset (one per --preset)")
    ap.add_argument("--preset", required=True, action="append")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--variant", action="append", default=None,
                    help="NAME:--key=value,--key=value (dotted overrides); default: the preset as it is")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if len(args.data) != len(args.preset):
        ap.error("give one --data per --preset")
    variants = [("preset", [])]
    if args.variant:
        variants = []
        for v in args.variant:
            name, _, ov = v.partition(":")
            variants.append((name, [t for kv in ov.split(",") if kv for t in kv.split("=", 1)]))
    results = []
    cols = ("con", "chance", "floor", "vis_grad", "r1", "r5", "t1", "r1_last", "t1_last", "itm_pos", "itm_neg",
            "itm_bal", "train_itm_acc")
    print(f"{'preset':22s} {'variant':14s} " + " ".join(f"{c:>8s}" for c in cols), flush=True)
    for preset, data in zip(args.preset, args.data):
        for name, ov in variants:
            with tempfile.TemporaryDirectory() as tmp:
                r = run_variant(preset, data, ov, args.steps, Path(tmp))
            r |= {"preset": preset, "variant": name, "overrides": ov, "steps": args.steps,
                  "con": r.get("contrastive", float("nan")), "train_itm_acc": r.get("itm_acc", float("nan"))}
            results.append(r)
            print(f"{preset:22s} {name:14s} " + " ".join(f"{r.get(c, float('nan')):8.3f}" for c in cols), flush=True)
    chance = {k: results[0][k] for k in ("chance_r1", "chance_r5", "chance_t1")}
    print("held-out chance: " + ", ".join(f"{k} {v:.3f}" for k, v in chance.items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results))
    return {"results": results}


if __name__ == "__main__":
    main()
