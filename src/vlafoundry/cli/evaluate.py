"""``vlafoundry eval CHECKPOINT``: closed-loop evaluation, robustness, paraphrases, offline metrics and the report.

Offline metrics (``--offline``, default on when the checkpoint's dataset exists locally) run on the held-out split
of the training data (``data.val_fraction``, ``data.seed``): action accuracy / error, retrieval recall@k, ITM
accuracy, modality balance and accuracy per subgroup; with ``--robustness`` they also fill offline columns of the
robustness table.

Writes ``eval.json``, ``report.md``, ``report.html`` and ``report_assets/`` into the run folder (or ``--out``).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_EPISODES = 100


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint in closed loop and write eval.json + report",
        description="Closed-loop evaluation of a trained policy on vectorised environments, with optional "
        "missing-modality robustness, paraphrased instructions and GIFs; writes eval.json, report.md and a "
        "self-contained report.html into the run folder.",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint directory or run directory (uses latest)")
    p.add_argument("--env", default=None, help="environment or suite (default: the one the policy was trained on)")
    p.add_argument("--episodes", type=int, default=None, help="episodes per task (default: the config's "
                   "eval.episodes, else 100)")  # fmt: skip
    p.add_argument("--workers", type=int, default=None, help="env worker processes (default: CPU count, max 4; "
                   "0 = in-process)")  # fmt: skip
    p.add_argument("--num-envs", type=int, default=None, help="parallel env slots (default min(64, episodes))")
    p.add_argument("--seed-start", type=int, default=None, help="first evaluation seed (default 10**9; shifted "
                   "past the training seeds if they overlap)")  # fmt: skip
    p.add_argument("--paraphrases", default=None, metavar="FILE", help="JSON paraphrase file (docs/evaluation.md); "
                   "adds a language-generalisation evaluation")  # fmt: skip
    p.add_argument("--robustness", action="store_true", help="also evaluate with each modality removed / noised")
    p.add_argument("--offline", action=argparse.BooleanOptionalAction, default=None,
                   help="offline metrics on the training data's held-out split: action accuracy/error, retrieval "
                   "recall@k, ITM accuracy, modality balance, accuracy per subgroup (default: on when the dataset "
                   "is available locally)")  # fmt: skip
    p.add_argument("--offline-samples", type=int, default=10000, metavar="N",
                   help="at most N held-out samples for offline metrics (default 10000; modality balance uses at "
                   "most 4096)")  # fmt: skip
    p.add_argument("--gifs", type=int, default=2, metavar="N", help="GIFs of N successful and N failed episodes")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: the run folder)")
    p.add_argument("--device", default="cpu", help="torch device for the policy (default cpu)")
    p.add_argument("--action-selection", choices=["greedy", "sample"], default=None,
                   help="override how discrete actions are picked (default: the checkpoint's model.action_selection)")
    p.add_argument("--sample-temperature", type=float, default=None, metavar="T",
                   help="override the softmax temperature of sampled actions (> 0; < 1 sharpens; default: the "
                   "checkpoint's model.sample_temperature)")  # fmt: skip
    p.set_defaults(handler=run_eval)


def _cfg_get(cfg: Any, *path: str, default: Any = None) -> Any:
    cur = cfg
    for key in path:
        if cur is None:
            return default
        cur = cur.get(key) if isinstance(cur, dict) else getattr(cur, key, None)
    return default if cur is None else cur


def run_dir_of(checkpoint: Path) -> Path:
    """Run folder of a checkpoint path: RUN for RUN or RUN/checkpoints/step_X, else the checkpoint folder."""
    checkpoint = checkpoint.resolve()
    if (checkpoint / "checkpoints").is_dir():
        return checkpoint
    if checkpoint.parent.name == "checkpoints":
        return checkpoint.parent.parent
    return checkpoint if checkpoint.is_dir() else checkpoint.parent


def run_eval(args: argparse.Namespace) -> int:
    from vlafoundry.data.format import write_json_atomic
    from vlafoundry.eval.paraphrase import load_paraphrases
    from vlafoundry.eval.report import GifSpec, ReportInputs, write_report
    from vlafoundry.eval.robustness import run_robustness
    from vlafoundry.eval.rollout import (
        DEFAULT_SEED_START,
        VectorRollout,
        _as_names,
        evaluate_policy,
        replay_frames,
        select_gif_episodes,
    )
    from vlafoundry.train.trainer import load_run

    if args.episodes is not None and args.episodes < 1:
        print(f"error: --episodes: expected >= 1, got {args.episodes}", file=sys.stderr)
        return 2
    try:  # fail on a bad paraphrase file before loading the model
        paraphrases = load_paraphrases(args.paraphrases) if args.paraphrases else None
    except ValueError as exc:
        print(f"error: --paraphrases: {exc}", file=sys.stderr)
        return 2
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        print(f"error: CHECKPOINT: no such file or directory: {ckpt}", file=sys.stderr)
        return 2
    if args.offline_samples < 1:
        print(f"error: --offline-samples: expected >= 1, got {args.offline_samples}", file=sys.stderr)
        return 2
    temperature = getattr(args, "sample_temperature", None)
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        print(f"error: --sample-temperature: expected a number > 0, got {temperature}", file=sys.stderr)
        return 2
    policy, cfg, _ = load_run(ckpt, device=args.device)
    if getattr(args, "action_selection", None):
        policy.cfg.action_selection = args.action_selection
    if temperature is not None:
        policy.cfg.sample_temperature = float(temperature)
    notes: list[str] = []
    try:
        offline_ds = _offline_dataset(cfg, args.offline, notes)
    except FileNotFoundError as exc:
        print(f"error: --offline: {exc}", file=sys.stderr)
        return 2
    args.episodes = args.episodes or int(_cfg_get(cfg, "eval", "episodes", default=DEFAULT_EPISODES))
    env = args.env or _cfg_get(cfg, "data", "env")
    if not env:
        print("error: --env: the checkpoint does not say which environment it was trained on; pass --env",
              file=sys.stderr)  # fmt: skip
        return 2
    from vlafoundry.envs import get_family

    env_kwargs: dict[str, Any] = get_family(env).env_kwargs(cfg.data)
    train_seed, train_eps = _cfg_get(cfg, "data", "seed"), _cfg_get(cfg, "data", "episodes")
    training_seeds = [(int(train_seed), int(train_seed) + int(train_eps))] if train_eps else None
    workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
    names = _as_names(env)
    total = args.episodes * len(names)
    num_envs = args.num_envs or min(64, total)
    seed_start = DEFAULT_SEED_START if args.seed_start is None else args.seed_start
    out = Path(args.out) if args.out else run_dir_of(ckpt)
    out.mkdir(parents=True, exist_ok=True)

    common = {"episodes": args.episodes, "seed_start": seed_start, "training_seeds": training_seeds}
    with VectorRollout(num_envs, workers, env_kwargs) as pool:
        result = evaluate_policy(policy, names, rollout=pool, **common)
        _print_rows("closed loop", result.rows)
        para = None
        if paraphrases is not None:
            para = evaluate_policy(policy, names, rollout=pool, paraphrases=paraphrases, **common)
            _print_rows("paraphrased instructions", para.rows)
    robustness = None
    if args.robustness:
        offline_fn = None
        if offline_ds is not None:
            from vlafoundry.eval.offline import offline_robustness_fn

            offline_fn = offline_robustness_fn(policy, offline_ds, max_samples=args.offline_samples)
        robustness = run_robustness(policy, names, num_envs=num_envs, workers=workers, env_kwargs=env_kwargs,
                                    offline_fn=offline_fn, **common)  # fmt: skip
        for r in robustness:
            print(f"  {r['condition']:<28} success {r['success_rate']:.3f}  Δ {r['delta_success']:+.3f}")

    tables: dict[str, dict[str, Any]] = {}
    offline = None
    if offline_ds is not None:
        offline = _offline(policy, cfg, offline_ds, args.offline_samples, env, notes)
        tables[f"Offline metrics (held-out split, {int(offline['metrics']['samples'])} samples)"] = offline["metrics"]
    if para is not None:
        tables["Language generalisation (paraphrased instructions)"] = {
            "success (original)": result.summary["success_rate"],
            "success (paraphrased)": para.summary["success_rate"],
            "paraphrased 95% CI": f"[{para.summary['ci_low']:.3f}, {para.summary['ci_high']:.3f}]",
            "fraction of episodes rewritten": para.summary["paraphrased_fraction"],
        }
    similarity, alignment = _similarity(policy, result.episodes, env_kwargs, notes)
    if alignment:
        tables["Alignment on evaluation episodes (first observation vs instruction)"] = alignment
    attention = _attention(policy, result.episodes, env_kwargs, notes)
    gifs = []
    for rec in select_gif_episodes(result.episodes, max(0, args.gifs)):
        frames = replay_frames(rec, env_kwargs)
        if frames:
            outcome = "success" if rec["success"] else "failure"
            gifs.append(GifSpec(frames, f"{outcome}: “{rec['instruction']}” (seed {rec['seed']}, "
                                        f"{rec['length']} steps)"))  # fmt: skip
    if args.gifs and not gifs:
        notes.append("no GIFs: the environment cannot render frames")

    payload = result.to_dict()
    payload["checkpoint"] = str(ckpt)
    pcfg = getattr(policy, "cfg", None)
    if getattr(pcfg, "action_selection", None) is not None:  # how discrete actions were picked in these rollouts
        payload["action_selection"] = {"mode": pcfg.action_selection, "sample_temperature": pcfg.sample_temperature}
    if para is not None:
        payload["paraphrase"] = para.to_dict()
    if robustness is not None:
        payload["robustness"] = robustness
    if alignment:
        payload["alignment"] = alignment
    if offline is not None:
        payload["offline"] = offline
    write_json_atomic(out / "eval.json", payload, default=_json_default)
    paths = write_report(
        out,
        ReportInputs(
            eval_result=payload,
            run_dir=run_dir_of(ckpt),
            robustness=robustness,
            tables=tables,
            similarity=similarity,
            attention=attention,
            gifs=gifs,
            notes=notes,
            title=f"Evaluation of {ckpt.name} on {env}",
            balance=offline["balance"] if offline else None,
            offline_bias=offline["bias"] if offline else None,
        ),
    )
    print(f"wrote {out / 'eval.json'}, {paths['markdown']}, {paths['html']}")
    return 0


def _offline_dataset(cfg: Any, wanted: bool | None, notes: list[str]) -> Any:
    """The held-out split of the checkpoint's dataset, or None (with a note) when offline metrics are skipped.

    ``wanted`` None: use it when it exists locally; True: it must exist (FileNotFoundError otherwise); False: skip.
    """
    if wanted is False:
        return None
    from vlafoundry.data import META_FILE, make_dataset

    data = getattr(cfg, "data", None)
    root = data.dataset_dir() if data is not None and hasattr(data, "dataset_dir") else None
    if root is None or not (Path(root) / META_FILE).exists():
        msg = (f"the training dataset is not available locally ({root}); create it with `vlafoundry data generate` "
               "or pass --no-offline")  # fmt: skip
        if wanted:
            raise FileNotFoundError(msg)
        notes.append(f"no offline metrics: {msg}")
        return None
    if not data.val_fraction > 0:
        msg = "the checkpoint was trained without a held-out split (data.val_fraction = 0)"
        if wanted:
            raise FileNotFoundError(msg)
        notes.append(f"no offline metrics: {msg}")
        return None
    ds = make_dataset(root, split="val", val_fraction=data.val_fraction, split_seed=data.seed,
                      **cfg.model.dataset_view())
    if len(ds) == 0:
        if wanted:
            raise FileNotFoundError(f"the held-out split of {root} is empty")
        notes.append(f"no offline metrics: the held-out split of {root} is empty")
        return None
    return ds


def _offline(policy: Any, cfg: Any, ds: Any, max_samples: int, env: str, notes: list[str]) -> dict[str, Any]:
    """Offline metrics, modality balance and per-subgroup accuracy on the held-out split (printed and returned)."""
    from vlafoundry.eval.offline import collect_offline_outputs, metrics_from_outputs, modality_balance, offline_bias

    outputs = collect_offline_outputs(policy, ds, max_samples=max_samples)
    metrics = metrics_from_outputs(outputs)
    balance = modality_balance(policy, ds, max_samples=min(max_samples, 4096), loss_cfg=getattr(cfg, "loss", None))
    bias = offline_bias(policy, ds, outputs=outputs)
    act = "action_acc" if "action_acc" in metrics else "action_l1"
    print(f"offline (held-out split, {int(metrics['samples'])} samples): {act} {metrics[act]:.3f}"
          + (f"  obs→instr r@1 {metrics['obs_to_instr_r@1']:.3f}  instr→obs r@1 {metrics['instr_to_obs_r@1']:.3f}"
             f"  ITM acc {metrics['itm_acc']:.3f}" if "itm_acc" in metrics else ""))  # fmt: skip
    print("  modality balance (ablation / gradient share): "
          + ", ".join(f"{m} {balance['ablation_share'][m]:.2f}/{balance['gradient_share'][m]:.2f}"
                      for m in balance["modalities"]))  # fmt: skip
    if "itm_acc" in metrics:
        notes.append("ITM accuracy scores matched pairs and hard negatives with the policy's ITM head; it is "
                     "meaningful only if the checkpoint was trained with an ITM objective (this config: loss.itm = "
                     f"{_cfg_get(cfg, 'loss', 'itm', default=0.0)}, pretrain.loss.itm = "
                     f"{_cfg_get(cfg, 'pretrain', 'loss', 'itm', default=0.0)}, the latter only if alignment "
                     "pretraining ran); an untrained head scores about chance.")  # fmt: skip
    else:
        notes.append("no retrieval / ITM metrics: the policy has no language encoder or no observation modality")
    data_env = _cfg_get(cfg, "data", "env")
    if data_env and str(data_env) != str(env):
        notes.append(f"offline metrics use the held-out split of the training data ({data_env}), not {env}")
    return {"dataset": str(ds.root), "split": "val", "metrics": metrics, "balance": balance, "bias": bias}


def _print_rows(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"{title}:")
    for r in rows:
        print(f"  {r['task']:<28} success {r['success_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  "
              f"length {r['mean_length']:.1f}  return {r['mean_return']:.3f}  ({r['episodes']} episodes)")  # fmt: skip


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def _first_observations(records: list[dict[str, Any]], env_kwargs: dict[str, Any], k: int) -> list[dict[str, Any]]:
    """Reset observations of the first episodes with distinct instructions (at most ``k``)."""
    from vlafoundry.envs import make_env

    seen: set[str] = set()
    chosen = []
    for rec in records:
        if rec["instruction"] not in seen:
            seen.add(rec["instruction"])
            chosen.append(rec)
        if len(chosen) == k:
            break
    obs, envs = [], {}
    try:
        for rec in chosen:
            if rec["env"] not in envs:
                envs[rec["env"]] = make_env(rec["env"], **env_kwargs)
            obs.append(envs[rec["env"]].reset(seed=int(rec["seed"])))
    finally:
        for e in envs.values():
            e.close()
    return obs


def _similarity(policy: Any, records: list[dict[str, Any]], env_kwargs: dict[str, Any], notes: list[str]
                ) -> tuple[Any, dict[str, float] | None]:  # fmt: skip
    """Cosine similarity of first observations vs instructions via ``policy.embed``, and retrieval recall@k."""
    if not hasattr(policy, "embed"):
        notes.append("no similarity heat map: the policy has no embed()")
        return None, None
    import torch

    from vlafoundry.eval.evaluator import MultimodalEvaluator

    obs = _first_observations(records, env_kwargs, 16)
    if len(obs) < 2:
        notes.append("no similarity heat map: fewer than two distinct instructions were evaluated")
        return None, None
    batch: dict[str, Any] = {"instruction": [o["instruction"] for o in obs],
                             "state": np.stack([o["state"] for o in obs])}  # fmt: skip
    if "image" in obs[0]:
        batch["image"] = np.stack([o["image"] for o in obs])
    with torch.no_grad():
        o_emb, i_emb = policy.embed(batch)
    o_n = torch.nn.functional.normalize(o_emb.float(), dim=-1)
    i_n = torch.nn.functional.normalize(i_emb.float(), dim=-1)
    sim = (o_n @ i_n.T).cpu().numpy()
    labels = batch["instruction"]
    alignment = MultimodalEvaluator().evaluate_alignment(o_emb.float(), i_emb.float(), top_k=(1, 5, 10))
    return (sim, [f"obs {k}" for k in range(len(labels))], labels), alignment


def _attention(policy: Any, records: list[dict[str, Any]], env_kwargs: dict[str, Any], notes: list[str],
               steps: int = 4) -> tuple[list[np.ndarray], list[np.ndarray], list[str]] | None:  # fmt: skip
    """Attention over the image tokens for the first ``steps`` steps of the first episode.

    Uses ``policy.attention_maps(obs) -> list of (h, w)`` when the policy has it; otherwise records the attention
    of every ``MultiHeadAttention`` whose keys are exactly the image tokens of the newest frame (e.g. language-to-
    vision cross-attention or vision self-attention), averaged over heads and queries.
    """
    import torch

    from vlafoundry.envs import make_env

    if not records or not hasattr(policy, "modules"):
        return None
    rec = records[0]
    env = make_env(rec["env"], **env_kwargs)
    frames, maps, titles = [], [], []
    attn_modules = [m for m in policy.modules() if hasattr(m, "record_attention")]
    try:
        o = env.reset(seed=int(rec["seed"]))
        for t in range(min(steps, len(rec["actions"]))):
            if "image" not in o:
                break
            amap = _attention_for(policy, o, attn_modules, torch)
            if amap is None:
                break
            view = _agent_view(env, o["image"])
            frames.append(view)
            # Minigrid's symbolic grid is indexed (x, y); its rendering has rows = y.
            maps.append(amap.T if view is not o["image"] else amap)
            titles.append(f"step {t}")
            o, *_ = env.step(np.asarray(rec["actions"][t]))
    finally:
        env.close()
        for m in attn_modules:
            m.record_attention, m.last_attention = False, None
        policy.reset()
    if not maps:
        notes.append("no attention maps: the policy exposes no attention over image tokens")
        return None
    return frames, maps, titles


def _agent_view(env: Any, image: np.ndarray) -> np.ndarray:
    """RGB rendering of the agent's egocentric view where the env offers one (Minigrid), else the raw image."""
    pov = getattr(getattr(env, "unwrapped", None), "get_pov_render", None)
    if pov is not None and image.dtype == np.uint8 and image.max() < 20:  # symbolic view -> render it
        try:
            return np.asarray(pov(tile_size=16), dtype=np.uint8)
        except Exception:  # rendering is cosmetic; fall back to the symbolic grid
            return image
    return image


def _attention_for(policy: Any, o: dict[str, Any], modules: list[Any], torch: Any) -> np.ndarray | None:
    batch = {"image": o["image"][None], "state": o["state"][None], "instruction": [o["instruction"]]}
    if hasattr(policy, "attention_maps"):
        return np.asarray(policy.attention_maps(batch)[0], dtype=float)
    h, w = o["image"].shape[:2]
    n_tokens = getattr(policy, "num_image_tokens", h * w)
    grid = policy.grid_hw(torch.as_tensor(o["image"][None, None])) if hasattr(policy, "grid_hw") else (h, w)
    if grid[0] * grid[1] != n_tokens:
        return None
    for m in modules:
        m.record_attention, m.last_attention = True, None
    policy.reset()
    with torch.no_grad():
        policy.select_action(batch)
    history = int(getattr(getattr(policy, "cfg", None), "history", 1) or 1)
    found = []
    for m in modules:
        a = m.last_attention  # (B, heads, Lq, Lk)
        if a is not None and a.dim() == 4 and a.shape[-1] == n_tokens * history:
            found.append(a[0, :, :, -n_tokens:].float().mean(dim=(0, 1)))  # newest frame's tokens, (N,)
    if not found:
        return None
    return found[-1].reshape(grid).cpu().numpy()
