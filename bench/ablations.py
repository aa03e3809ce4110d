"""Ablations of a preset, several training seeds each: fusion type, alignment pretraining, MoE, modality dropout.

    python bench/ablations.py --preset babyai-gotolocal --data DIR --seeds 0,1 [--episodes 500]
        [--variants film,cross_attention,early,late,no_pretrain,moe,modality_dropout] [--steps N]
        [--pretrain-steps N] [--out bench/results/ablations/gotolocal] [--threads 1] [--workers 0]
        [--override KEY=VALUE ...] [--section.key VALUE ...] [--dry-run | --table-only]

The *baseline* is the preset as shipped, with its alignment pretraining. Every variant changes one thing from it:

    film, cross_attention, early, late   model.fusion
    no_pretrain                          behaviour cloning from scratch (no alignment-pretraining phase)
    moe                                  model.moe true (a mixture of experts replaces the feed-forward layer of
                                         every transformer block; FiLM fusion has none, so on a FiLM preset
                                         without vision self-attention layers it is invalid: use
                                         cross_attention+moe and compare it with cross_attention)
    modality_dropout                     model.modality_dropout.<m> = --dropout-p for every input the model has
    a+b                                  both changes, e.g. cross_attention+moe (compare it with cross_attention)

A variant whose resolved configuration equals an earlier one (``film`` for a FiLM preset) is not trained again: it
shares that run and the table shows it as ``baseline = film``. Every variant is checked before anything is trained
(config validation, the model built on the dataset, one forward pass of each phase); an invalid one -- a bad key
combination, or ``moe`` on a model without any feed-forward layer to replace -- is reported with the reason and
skipped. ``--dry-run`` stops after these checks.

For every (variant, seed): alignment pretraining (unless off) and behaviour cloning into
``<out>/runs/<variant>-s<seed>/{pretrain,train}``, then closed-loop evaluation of ``--episodes`` episodes per task
with seeds from 10^9 (disjoint from the demonstrations) with full input and with each modality the model has removed
at test time (``vlafoundry.eval.robustness.run_robustness``). Everything is resumable: finished phases and runs are
skipped, interrupted phases resume from their last checkpoint, and several processes may work on different seeds
or variants of one ``--out`` at once: a process takes an exclusive lock on a run folder (``<run>/.lock``, POSIX
``flock``) before working on it, so a second process asking for the same (variant, seed) -- the baseline is part of
every invocation -- waits for the first and then finds it finished. ``--table-only`` trains nothing and writes the
combined table from the runs finished so far, listing the others as not finished.

Writes ``<out>/ablations.csv`` (one row per (variant, seed)), ``<out>/ablations.md`` (one row per variant: success
averaged over seeds, each seed's 95% Wilson interval, the interval of the pooled episodes, the spread over seeds,
success with each modality removed, training wall time) and prints the table and a final JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlafoundry.data.format import write_json_atomic

FUSIONS = ("film", "cross_attention", "early", "late")
ATOMS = ("baseline", *FUSIONS, "no_pretrain", "moe", "modality_dropout")
DEFAULT_VARIANTS = "film,cross_attention,early,late,no_pretrain,moe,modality_dropout"
MODALITIES = ("image", "instruction", "state")
EVAL_SEED_START = 10**9
IGNORED_KEYS = ("threads", "progress")  # train.* keys that may change between reruns of one run folder


# ---------------------------------------------------------------------------------------------- arguments
def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="babyai-gotolocal", help="preset or YAML file (default: %(default)s)")
    p.add_argument("--data", default=None, help="dataset directory (default: the preset's cached dataset, "
                   "generated when missing)")  # fmt: skip
    p.add_argument("--seeds", default="0", help="comma-separated training seeds (default: %(default)s)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help=f"comma-separated variants from {list(ATOMS)}, or a+b combinations; the baseline is "
                   "always included (default: %(default)s)")  # fmt: skip
    p.add_argument("--steps", type=int, default=None, help="train.steps for every variant (default: the preset's)")
    p.add_argument("--pretrain-steps", type=int, default=None,
                   help="pretrain.steps for every variant that pretrains (default: the preset's)")
    p.add_argument("--episodes", type=int, default=500, help="evaluation episodes per task (default: %(default)s)")
    p.add_argument("--dropout-p", type=float, default=0.15,
                   help="per-modality drop probability of the modality_dropout variant (default: %(default)s)")
    p.add_argument("--out", default=None, help="output folder (default: bench/results/ablations/<preset>)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for training and evaluation (0: torch's "
                   "default; default: %(default)s)")  # fmt: skip
    p.add_argument("--workers", type=int, default=0,
                   help="evaluation worker processes (0: environments stepped in-process; default: %(default)s)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra dotted config override applied to every variant, e.g. model.d_model=64 "
                   "(repeatable; --section.key VALUE works too)")  # fmt: skip
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    p.add_argument("--dry-run", action="store_true", help="check and list the variants, train nothing")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: write the tables from the (variant, seed) runs already finished; the others "
                   "are listed as not finished")  # fmt: skip
    return p.parse_known_args(argv)


# ---------------------------------------------------------------------------------------------- variants
class RunFolderMismatch(RuntimeError):
    """A run folder of ``--out`` was made with other settings (resuming it would mix two experiments)."""


@dataclass
class Variant:
    name: str
    overrides: list[str]  # relative to the baseline (before the per-seed --train.seed)
    pretrain: bool
    changes: str
    same_as: str | None = None  # name of the earlier variant with the same config (shares its runs)
    invalid: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def atom_change(atom: str, modalities: list[str], dropout_p: float) -> tuple[list[str], bool, str]:
    """(overrides, pretrain, description) of one named change."""
    if atom == "baseline":
        return [], True, "preset as shipped"
    if atom in FUSIONS:
        return ["--model.fusion", atom], True, f"model.fusion={atom}"
    if atom == "no_pretrain":
        return [], False, "no alignment pretraining"
    if atom == "moe":
        return ["--model.moe", "true"], True, "model.moe=true"
    if atom == "modality_dropout":
        ov: list[str] = []
        for m in modalities:
            ov += [f"--model.modality_dropout.{m}", str(dropout_p)]
        return ov, True, f"model.modality_dropout.{{{','.join(modalities)}}}={dropout_p:g}"
    raise ValueError(f"unknown variant {atom!r}; expected one of {list(ATOMS)} or a+b combinations")


def make_variant(name: str, modalities: list[str], dropout_p: float) -> Variant:
    overrides: list[str] = []
    pretrain, changes = True, []
    for atom in name.split("+"):
        ov, pre, desc = atom_change(atom.strip(), modalities, dropout_p)
        overrides += ov
        pretrain = pretrain and pre
        if atom != "baseline":
            changes.append(desc)
    return Variant(name, overrides, pretrain, "; ".join(changes) or "preset as shipped")


def config_key(cfg: Any, pretrain: bool) -> str:
    from vlafoundry.train.config import to_dict

    d = to_dict(cfg)
    d.pop("name", None)
    if not pretrain:
        d.pop("pretrain", None)  # the pretraining settings do not matter when it is off
    return json.dumps({"cfg": d, "pretrain": pretrain}, sort_keys=True, default=str)


def preflight(cfg: Any, pretrain: bool, root: Path) -> dict[str, Any]:
    """Build the model of ``cfg`` on the dataset and run one forward pass of each phase (raises on any problem)."""
    import torch

    from vlafoundry.models.policy import count_parameters
    from vlafoundry.nn.moe import MultimodalMixtureOfExperts
    from vlafoundry.train.trainer import Trainer

    info: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for phase in ("pretrain", "train") if pretrain else ("train",):
            tr = Trainer(cfg, Path(tmp) / phase, phase=phase, resume=False, dataset_root=root)
            idx = list(range(min(8, len(tr.train_ds))))
            batch = {k: (v.to(tr.device) if isinstance(v, torch.Tensor) else v)
                     for k, v in tr.train_ds.__getitems__(idx).items()}  # fmt: skip
            tr.policy.train()
            with torch.no_grad():
                loss, _ = tr.policy(batch, tr.loss_cfg)
            if not torch.isfinite(loss):
                raise ValueError(f"{phase}: the first forward pass gives a non-finite loss ({float(loss)})")
            p = tr.policy
            info.update(parameters=count_parameters(p),
                        moe_layers=sum(isinstance(m, MultimodalMixtureOfExperts) for m in p.modules()),
                        modalities=[m for m, has in zip(MODALITIES, (p.has_image, p.has_language, p.has_state),
                                                        strict=True) if has])  # fmt: skip
    if cfg.model.moe and info["moe_layers"] == 0:
        no_vision = "model.vision_layers=0" if "image" in info["modalities"] else "no image input"
        raise ValueError(
            f"model.moe=true adds no expert layer to this model: fusion={cfg.model.fusion} has no transformer "
            f"feed-forward layer and there is no vision self-attention layer ({no_vision}; MoE replaces the "
            "feed-forward layer of transformer blocks: cross_attention / early / late fusion and vision "
            "self-attention layers); "
            "try cross_attention+moe (compare it with cross_attention) or early+moe")
    return info


# ---------------------------------------------------------------------------------------------- one run
def _phase_done(run: Path, steps: int) -> bool:
    from vlafoundry.train.trainer import phase_finished

    f = run / "summary.json"
    if not f.exists():
        return False
    try:
        s = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return phase_finished(s, steps) and (run / "checkpoints").is_dir()


def _fit(cfg: Any, run: Path, phase: str, root: Path, timing: dict[str, float], timing_path: Path,
         init_from: Path | None = None) -> None:
    from vlafoundry.train.trainer import Trainer, fit_phase

    t0 = time.perf_counter()
    if phase == "train" and cfg.train.restarts:
        # several cosine cycles: count the cycles this attempt ran, not those recorded by an earlier attempt
        rec = run / "cycles.json"
        earlier = json.loads(rec.read_text()) if rec.exists() else []
        summary, _ = fit_phase(cfg, run, phase=phase, init_from=init_from, dataset_root=root)
        summary = dict(summary, wall_s=summary["wall_s"] - sum(float(r["wall_s"]) for r in earlier))
        start = sum(int(r["step"]) for r in earlier)
    else:
        tr = Trainer(cfg, run, phase=phase, init_from=init_from, dataset_root=root)
        start = tr.step
        summary = tr.fit()
    # accumulated over resumed attempts; the loop time and steps give the time per step
    timing[f"{phase}_s"] = timing.get(f"{phase}_s", 0.0) + time.perf_counter() - t0
    timing[f"{phase}_loop_s"] = timing.get(f"{phase}_loop_s", 0.0) + float(summary["wall_s"])
    timing[f"{phase}_loop_steps"] = timing.get(f"{phase}_loop_steps", 0) + int(summary["step"]) - start
    timing[f"{phase}_steps"] = int(summary["step"])
    write_json_atomic(timing_path, timing)


def _comparable(cfg: Any) -> dict[str, Any]:
    """A config as JSON data, without the settings that do not change what is trained."""
    from vlafoundry.train.config import to_dict

    conf = json.loads(json.dumps(to_dict(cfg), default=str))
    for k in IGNORED_KEYS:
        conf.get("train", {}).pop(k, None)
    return conf


def _run_identity(v: Variant, seed: int, ctx: dict[str, Any]) -> tuple[Any, Path, dict[str, Any]]:
    """(config, run folder, identity record) of one (variant, seed); raises RunFolderMismatch when the folder holds
    a run made with other settings."""
    from vlafoundry.config import from_dict
    from vlafoundry.train.config import ExperimentConfig, load_config

    cfg = load_config(ctx["preset"], ctx["base"] + v.overrides + ["--train.seed", str(seed)])
    run = ctx["out"] / "runs" / f"{v.name}-s{seed}"
    ident = {"variant": v.name, "seed": seed, "pretrain": v.pretrain, "config": _comparable(cfg)}
    ident_path = run / "variant.json"
    if ident_path.exists():
        old = json.loads(ident_path.read_text())
        try:  # through today's config class: a setting added since (with its default) is no difference
            old["config"] = _comparable(from_dict(ExperimentConfig, old.get("config", {})))
        except Exception:  # noqa: BLE001 - an unreadable record is a mismatch, reported below
            pass
        if old != ident:
            diff = ["pretrain"] if old.get("pretrain") != ident["pretrain"] else []
            diff += _dict_diff(old.get("config", {}), ident["config"])
            raise RunFolderMismatch(f"{run} holds a run with different settings ({', '.join(diff[:8])}); use another "
                               "--out or delete that folder")  # fmt: skip
    return cfg, run, ident


def finished_result(run: Path, episodes: int) -> dict[str, Any] | None:
    """The result of a finished run evaluated on ``episodes`` episodes per task, else None."""
    f = run / "result.json"
    if not f.exists():
        return None
    row = json.loads(f.read_text())
    return row if row.get("episodes_per_task") == episodes else None


@contextlib.contextmanager
def run_lock(run: Path, label: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on the run folder ``run`` (``run/.lock``); wait, saying so, while another
    process holds it. Where ``fcntl`` is missing (Windows) nothing is locked."""
    run.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(run / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{label} another process is working on {run}: waiting for it", flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_one(v: Variant, seed: int, ctx: dict[str, Any]) -> dict[str, Any]:
    """Pretrain (unless off), train and evaluate one (variant, seed), holding the run folder's lock; cached in the
    run's result.json."""
    cfg, run, ident = _run_identity(v, seed, ctx)
    with run_lock(run, f"[{v.name} seed {seed}]"):
        return _run_one_locked(v, seed, ctx, cfg, run, ident)


def _run_one_locked(v: Variant, seed: int, ctx: dict[str, Any], cfg: Any, run: Path,
                    ident: dict[str, Any]) -> dict[str, Any]:
    from vlafoundry.eval.robustness import run_robustness
    from vlafoundry.eval.rollout import ObservationCorruption
    from vlafoundry.train import load_run

    ident_path = run / "variant.json"
    if not ident_path.exists():
        write_json_atomic(ident_path, ident, default=str)
    result_path = run / "result.json"
    row = finished_result(run, ctx["episodes"])
    if row is not None:
        print(f"[{v.name} seed {seed}] finished earlier: {result_path}", flush=True)
        return row
    if result_path.exists():
        row = json.loads(result_path.read_text())
        print(f"[{v.name} seed {seed}] evaluated earlier on {row.get('episodes_per_task')} episodes per task; "
              f"evaluating again on {ctx['episodes']}", flush=True)  # fmt: skip

    timing_path = run / "timing.json"
    timing: dict[str, float] = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    root = ctx["root"]
    if v.pretrain:
        if _phase_done(run / "pretrain", cfg.pretrain.steps):
            print(f"[{v.name} seed {seed}] pretraining finished earlier", flush=True)
        else:
            print(f"[{v.name} seed {seed}] alignment pretraining, {cfg.pretrain.steps} steps", flush=True)
            _fit(cfg, run / "pretrain", "pretrain", root, timing, timing_path)
    if _phase_done(run / "train", cfg.train.steps):
        print(f"[{v.name} seed {seed}] behaviour cloning finished earlier", flush=True)
    else:
        print(f"[{v.name} seed {seed}] behaviour cloning, {cfg.train.steps} steps", flush=True)
        _fit(cfg, run / "train", "train", root, timing, timing_path,
             init_from=run / "pretrain" if v.pretrain else None)

    policy, _, _ = load_run(run / "train", device="cpu")
    present = [m for m, has in zip(MODALITIES, (policy.has_image, policy.has_language, policy.has_state),
                                   strict=True) if has]  # fmt: skip
    conditions = [ObservationCorruption(name="full input")] + [ObservationCorruption(remove=(m,)) for m in present]
    print(f"[{v.name} seed {seed}] closed-loop evaluation: {ctx['episodes']} episodes per task, full input and "
          f"without {', '.join(present)}", flush=True)
    t0 = time.perf_counter()
    rows = run_robustness(policy, cfg.data.env, conditions=conditions, episodes=ctx["episodes"],
                          workers=ctx["workers"], seed_start=EVAL_SEED_START, training_seeds=ctx["training_seeds"],
                          env_kwargs=ctx["env_kwargs"])  # fmt: skip
    eval_s = time.perf_counter() - t0
    write_json_atomic(run / "eval.json", rows, default=str)

    full = rows[0]
    row: dict[str, Any] = {
        "variant": v.name, "seed": seed, "status": "ok", "same_run_as": "", "changes": v.changes,
        "preset": ctx["preset"], "env": cfg.data.env, "dataset": str(root), "dataset_episodes": ctx["dataset_episodes"],
        "pretrain": v.pretrain, "pretrain_steps": int(timing.get("pretrain_steps", 0)) if v.pretrain else 0,
        "train_steps": int(timing.get("train_steps", cfg.train.steps)), "parameters": v.info.get("parameters"),
        "moe_layers": v.info.get("moe_layers"), "episodes_per_task": ctx["episodes"], "episodes": full["episodes"],
        "successes": full["successes"], "success_rate": full["success_rate"], "ci_low": full["ci_low"],
        "ci_high": full["ci_high"],
    }  # fmt: skip
    by_cond = {r["condition"]: r for r in rows[1:]}
    for m in MODALITIES:
        r = by_cond.get(f"no {m}")
        for k in ("successes", "success_rate", "ci_low", "ci_high"):
            row[f"no_{m}_{k}"] = r[k] if r is not None else None
    pre_s, train_s = timing.get("pretrain_s", 0.0), timing.get("train_s", 0.0)
    loop_steps = timing.get("train_loop_steps", 0)
    row.update({
        "pretrain_wall_s": round(pre_s, 1), "train_wall_s": round(train_s, 1),
        "total_train_wall_s": round(pre_s + train_s, 1),
        "s_per_step": round(timing.get("train_loop_s", 0.0) / loop_steps, 4) if loop_steps else None,
        "pretrain_s_per_step": (round(timing.get("pretrain_loop_s", 0.0) / timing["pretrain_loop_steps"], 4)
                                if timing.get("pretrain_loop_steps") else None),
        "eval_wall_s": round(eval_s, 1), "threads": ctx["threads"], "overrides": " ".join(ctx["base"] + v.overrides),
        "run_dir": str(run),
    })  # fmt: skip
    write_json_atomic(result_path, row, default=str)
    return row


def _dict_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _dict_diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


# ---------------------------------------------------------------------------------------------- tables
CSV_FIELDS = [
    "variant", "seed", "status", "same_run_as", "changes", "preset", "env", "dataset", "dataset_episodes", "pretrain",
    "pretrain_steps", "train_steps", "parameters", "moe_layers", "episodes_per_task", "episodes", "successes",
    "success_rate", "ci_low", "ci_high",
    *[f"no_{m}_{k}" for m in MODALITIES for k in ("successes", "success_rate", "ci_low", "ci_high")],
    "pretrain_wall_s", "train_wall_s", "total_train_wall_s", "s_per_step", "pretrain_s_per_step", "eval_wall_s",
    "threads", "overrides", "run_dir",
]  # fmt: skip


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _wall(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 600 else f"{seconds / 60:.1f} min"


def _ci(lo: float, hi: float) -> str:
    return f"[{_pct(lo)}, {_pct(hi)}]"


def summarize(label: str, changes: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from the runs (seeds) of one variant."""
    from vlafoundry.eval.stats import wilson_interval

    rows = sorted(rows, key=lambda r: r["seed"])
    rates = [r["success_rate"] for r in rows]
    succ, n = sum(r["successes"] for r in rows), sum(r["episodes"] for r in rows)
    lo, hi = wilson_interval(succ, n)
    s: dict[str, Any] = {
        "variant": label, "changes": changes, "seeds": [r["seed"] for r in rows],
        "episodes_per_seed": rows[0]["episodes"], "success_mean": sum(rates) / len(rates),
        "per_seed": [[r["seed"], r["success_rate"], r["ci_low"], r["ci_high"]] for r in rows],
        "pooled_ci": [lo, hi], "spread": [min(rates), max(rates)],
        "train_wall_s_mean": sum(r["total_train_wall_s"] for r in rows) / len(rows),
    }  # fmt: skip
    for m in MODALITIES:
        vals = [r[f"no_{m}_success_rate"] for r in rows]
        if any(v is None for v in vals):
            s[f"no_{m}"] = None
            continue
        ms, mn = sum(r[f"no_{m}_successes"] for r in rows), sum(r["episodes"] for r in rows)
        s[f"no_{m}"] = {"mean": sum(vals) / len(vals), "pooled_ci": list(wilson_interval(ms, mn))}
    return s


def markdown(summaries: list[dict[str, Any]], skipped: list[tuple[str, str, str]], header: list[str]) -> str:
    cols = ["variant", "changes from the baseline", "seeds", "success % (mean over seeds)",
            "per seed: success % [Wilson 95%]", "pooled 95% CI", "spread over seeds (min-max)", "no image",
            "no instruction", "no state", "train wall / run"]  # fmt: skip
    lines = [*header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in summaries:
        removed = []
        for m in MODALITIES:
            r = s[f"no_{m}"]
            removed.append("-" if r is None else f"{_pct(r['mean'])} {_ci(*r['pooled_ci'])}")
        per_seed = "; ".join(f"s{seed}: {_pct(p)} {_ci(lo, hi)}" for seed, p, lo, hi in s["per_seed"])
        lines.append("| " + " | ".join([
            s["variant"], s["changes"], str(len(s["seeds"])), f"**{_pct(s['success_mean'])}**", per_seed,
            _ci(*s["pooled_ci"]), f"{_pct(s['spread'][0])}-{_pct(s['spread'][1])}", *removed,
            _wall(s["train_wall_s_mean"])]) + " |")  # fmt: skip
    for name, changes, why in skipped:
        lines.append("| " + " | ".join([name, changes, "0", f"not run: {why}", *["-"] * (len(cols) - 4)]) + " |")
    lines += [
        "",
        "Success: closed-loop success on the evaluation episodes (seeds from 10^9, disjoint from the "
        "demonstrations); for a suite, pooled over its tasks (equal episodes per task, so the mean over tasks). "
        "Pooled 95% CI: Wilson interval of all seeds' episodes together (it ignores the variation between training "
        "seeds, which the spread shows). No image / instruction / state: the same episodes with that modality "
        "removed at test time (mean over seeds, pooled Wilson interval); '-': the model has no such input. Train "
        "wall: pretraining + behaviour cloning per run, mean over seeds.",
    ]
    return "\n".join(lines) + "\n"


def _cell(x: Any) -> Any:
    if x is None:
        return "-"
    return round(x, 4) if isinstance(x, float) else x


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in CSV_FIELDS})
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- main
def _dataset_meta(root: Path) -> dict[str, Any]:
    from vlafoundry.data import META_FILE

    f = root / META_FILE
    if not f.exists():
        raise FileNotFoundError(f"--data: {root} is not a vlafoundry dataset (no {META_FILE}); create one with "
                                "`vlafoundry data generate`")  # fmt: skip
    return json.loads(f.read_text())


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads > 0:
        os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from vlafoundry.config import ConfigError
    from vlafoundry.train.config import load_config
    from vlafoundry.train.distributed import init_distributed
    from vlafoundry.train.trainer import ensure_dataset

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.episodes < 1:
        print(f"error: --episodes: expected >= 1, got {args.episodes}", file=sys.stderr)
        return 2
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds: expected comma-separated integers, got {args.seeds!r}", file=sys.stderr)
        return 2
    names = ["+".join(a.strip() for a in n.split("+")) for n in args.variants.split(",") if n.strip()]
    if "baseline" not in names:
        names.insert(0, "baseline")
    bad = [a for n in names for a in n.split("+") if a not in ATOMS]
    if bad or not seeds:
        print(f"error: --variants: unknown {bad}; expected names from {list(ATOMS)} or a+b combinations"
              if bad else "error: --seeds: no seed given", file=sys.stderr)  # fmt: skip
        return 2

    user = list(extra)
    for ov in args.override:
        user.append(ov if ov.startswith("--") else f"--{ov}")
    base = ["--train.progress", "true" if args.progress else "false"]
    if args.threads > 0:
        base += ["--train.threads", str(args.threads)]
    base += user
    if args.steps is not None:
        base += ["--train.steps", str(args.steps)]
    if args.pretrain_steps is not None:
        base += ["--pretrain.steps", str(args.pretrain_steps)]
    try:
        cfg0 = load_config(args.preset, base)
        preset_cfg = load_config(args.preset)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.data:
        root = Path(args.data).expanduser().resolve()
        try:
            meta = _dataset_meta(root)
        except FileNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        data_env = meta.get("env", {}).get("name") or meta.get("generation", {}).get("env")
        if data_env != cfg0.data.env:
            print(f"error: --data: {root} holds {data_env} demonstrations, the preset {args.preset} trains on "
                  f"{cfg0.data.env}", file=sys.stderr)  # fmt: skip
            return 2
        gen = meta.get("generation", {})
        base = ["--data.path", str(root), "--data.episodes", str(meta["counts"]["episodes"]),
                "--data.seed", str(gen.get("seed", 0)), *base]  # fmt: skip
    else:
        root = ensure_dataset(cfg0, init_distributed(cfg0.train.device), progress=args.progress)
        meta = _dataset_meta(root)
    seed0 = int(meta.get("generation", {}).get("seed", 0))
    training_seeds = [(seed0, seed0 + int(meta["counts"].get("seeds_used", meta["counts"]["episodes"])))]
    cfg0 = load_config(args.preset, base)
    out = Path(args.out or f"bench/results/ablations/{cfg0.name}")

    notes = [f"preset {args.preset} ({cfg0.data.env}), dataset {root} ({meta['counts']['episodes']} demonstrations)"]
    if args.steps is not None:
        notes.append(f"train.steps overridden to {args.steps} for every variant (preset: {preset_cfg.train.steps})")
    if args.pretrain_steps is not None:
        notes.append(f"pretrain.steps overridden to {args.pretrain_steps} for every variant that pretrains "
                     f"(preset: {preset_cfg.pretrain.steps})")  # fmt: skip
    if user:
        notes.append(f"extra overrides for every variant: {' '.join(user)}")
    for n in notes:
        print(f"NOTE: {n}", flush=True)

    # ---- check every variant before training anything
    try:
        base_info = preflight(cfg0, True, root)
    except Exception as exc:  # noqa: BLE001 - reported, then stop: nothing can run without a baseline
        print(f"error: the baseline ({args.preset} with the overrides above) is invalid: {exc}", file=sys.stderr)
        return 2
    modalities = base_info["modalities"]
    variants: list[Variant] = []
    seen: dict[str, str] = {}
    for name in names:
        v = make_variant(name, modalities, args.dropout_p)
        if any(name == w.name for w in variants):
            continue
        try:
            cfg = load_config(args.preset, base + v.overrides)
            key = config_key(cfg, v.pretrain)
            if key in seen:
                v.same_as = seen[key]
            else:
                v.info = base_info if name == "baseline" else preflight(cfg, v.pretrain, root)
                seen[key] = name
        except Exception as exc:  # noqa: BLE001 - any failure to build/run the model makes the variant invalid
            v.invalid = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (ValueError, ConfigError)) else str(exc)
        variants.append(v)
        status = (f"INVALID: {v.invalid}" if v.invalid else f"same configuration as {v.same_as}" if v.same_as
                  else f"ok ({v.info['parameters']:,} parameters, {v.info['moe_layers']} MoE layers)")
        print(f"variant {name:<22} {v.changes:<48} {status}", flush=True)
    invalid = {v.name: v.invalid for v in variants if v.invalid}
    for name, why in invalid.items():
        print(f"WARNING: variant {name} is invalid and will be skipped: {why}", file=sys.stderr, flush=True)
    if args.dry_run:
        print(json.dumps({"dry_run": True, "variants": {v.name: {"changes": v.changes, "overrides": v.overrides,
                          "pretrain": v.pretrain, "same_as": v.same_as, "invalid": v.invalid, **v.info}
                          for v in variants}}))  # fmt: skip
        return 0

    # ---- train and evaluate
    out.mkdir(parents=True, exist_ok=True)
    ctx = {"preset": args.preset, "base": base, "out": out, "root": root, "episodes": args.episodes,
           "workers": args.workers, "training_seeds": training_seeds,
           "threads": args.threads or torch.get_num_threads(),
           "dataset_episodes": meta["counts"]["episodes"],
           "env_kwargs": {"image": cfg0.data.image} if cfg0.data.env.startswith("babyai/") else {}}  # fmt: skip
    results: dict[tuple[str, int], dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for v in variants:
        if v.invalid or v.same_as:
            continue
        for seed in seeds:
            t0 = time.perf_counter()
            try:
                if args.table_only:
                    row = finished_result(_run_identity(v, seed, ctx)[1], args.episodes)
                    if row is None:
                        print(f"[{v.name} seed {seed}] not finished: left out of the table", flush=True)
                        continue
                    results[(v.name, seed)] = row
                    continue
                results[(v.name, seed)] = run_one(v, seed, ctx)
            except RunFolderMismatch as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others (hours of CPU)
                traceback.print_exc()
                failed[f"{v.name}-s{seed}"] = f"{type(exc).__name__}: {exc}"
                print(f"ERROR: {v.name} seed {seed} failed: {exc}", file=sys.stderr, flush=True)
                continue
            r = results[(v.name, seed)]
            print(f"[{v.name} seed {seed}] success {_pct(r['success_rate'])}% {_ci(r['ci_low'], r['ci_high'])} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
            write_outputs(out, variants, seeds, results, notes)
    summaries = write_outputs(out, variants, seeds, results, notes)
    print((out / "ablations.md").read_text())
    print(f"wrote {out / 'ablations.csv'} and {out / 'ablations.md'}")
    print(json.dumps({"preset": args.preset, "env": cfg0.data.env, "dataset": str(root),
                      "dataset_episodes": meta["counts"]["episodes"], "seeds": seeds, "episodes": args.episodes,
                      "train_steps": cfg0.train.steps, "pretrain_steps": cfg0.pretrain.steps,
                      "steps_overridden": args.steps is not None, "summary": summaries, "invalid": invalid,
                      "failed": failed, "csv": str(out / "ablations.csv"), "md": str(out / "ablations.md")}))
    return 1 if failed else 0


def write_outputs(out: Path, variants: list[Variant], seeds: list[int], results: dict[tuple[str, int], dict],
                  notes: list[str]) -> list[dict[str, Any]]:
    by_name = {v.name: v for v in variants}
    csv_rows: list[dict[str, Any]] = []
    for v in variants:
        for seed in seeds:
            if v.invalid:
                csv_rows.append({"variant": v.name, "seed": seed, "status": f"invalid: {v.invalid}",
                                 "changes": v.changes})  # fmt: skip
                continue
            r = results.get((v.same_as or v.name, seed))
            if r is None:
                csv_rows.append({"variant": v.name, "seed": seed, "status": "not finished", "changes": v.changes})
                continue
            csv_rows.append(dict(r, variant=v.name, changes=v.changes, same_run_as=v.same_as or ""))
    write_csv(out / "ablations.csv", csv_rows)

    summaries, skipped = [], []
    for v in variants:
        if v.same_as:
            continue
        aliases = [w.name for w in variants if w.same_as == v.name]
        label = " = ".join([v.name, *aliases])
        if v.invalid:
            skipped.append((label, v.changes, f"invalid: {v.invalid}"))
            continue
        rows = [results[(v.name, s)] for s in seeds if (v.name, s) in results]
        if not rows:
            skipped.append((label, v.changes, "no finished run"))
            continue
        summaries.append(summarize(label, by_name[v.name].changes, rows))
    header = ["# Ablations", "", *[f"* {n}" for n in notes]]
    (out / "ablations.md").write_text(markdown(summaries, skipped, header))
    return summaries


if __name__ == "__main__":
    raise SystemExit(main())
