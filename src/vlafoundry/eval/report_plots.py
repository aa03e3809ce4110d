"""The plots of the evaluation report (:mod:`vlafoundry.eval.report`): PNGs made with matplotlib's Agg backend
(training curves, success per task / subgroup / condition with Wilson intervals, similarity heat map, attention
maps, modality balance) and episode GIFs. Every function writes one file and returns its path; all are importable
from :mod:`vlafoundry.eval.report` as before.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return path


# ---------------------------------------------------------------------------------------------------- plots


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``metrics.jsonl`` file; blank and truncated (partially written) lines are skipped."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "step" in rec:
            out.append(rec)
    return out


def plot_training_curves(metrics: Sequence[Mapping[str, Any]], path: Path, max_panels: int = 6) -> Path | None:
    """One panel per numeric metric (``loss`` first), one line per split; ``None`` if nothing to plot."""
    keys: list[str] = []
    for rec in metrics:
        for k, v in rec.items():
            if k in ("step", "split", "epoch", "time") or k in keys:
                continue
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                keys.append(k)
    keys.sort(key=lambda k: (k != "loss", k))
    keys = keys[:max_panels]
    if not keys:
        return None
    plt = _plt()
    cols = min(3, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, layout="constrained")
    splits = sorted({str(r.get("split", "train")) for r in metrics})
    for ax, key in zip(axes.flat, keys, strict=False):
        for split in splits:
            pts = [
                (r["step"], r[key])
                for r in metrics
                if str(r.get("split", "train")) == split and isinstance(r.get(key), (int, float))
            ]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o" if len(pts) < 30 else None, ms=3, label=split)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle("Training and validation curves")
    return _save(fig, path)


def _bar_with_ci(labels: Sequence[str], rate: Sequence[float], low: Sequence[float], high: Sequence[float],
                 title: str, path: Path, color: str = "#4C72B0") -> Path:  # fmt: skip
    plt = _plt()
    rate_a, low_a, high_a = (np.asarray(v, dtype=float) for v in (rate, low, high))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.75 * len(labels) + 1.5), 3.6), layout="constrained")
    x = np.arange(len(labels))
    err = np.stack([np.clip(rate_a - low_a, 0, None), np.clip(high_a - rate_a, 0, None)])
    ax.bar(x, rate_a, yerr=err, capsize=4, color=color)
    ax.set_xticks(x, labels, rotation=30 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (95% Wilson CI)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_success_per_task(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Bar chart of success per task with Wilson-interval error bars."""
    return _bar_with_ci([r["task"] for r in rows], [r["success_rate"] for r in rows],
                        [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], "Success per task", path)  # fmt: skip


def plot_robustness(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Bar chart of the robustness table (success per condition with Wilson intervals)."""
    return _bar_with_ci([r["condition"] for r in rows], [r["success_rate"] for r in rows],
                        [r["ci_low"] for r in rows], [r["ci_high"] for r in rows],
                        "Robustness: success under missing / noisy inputs", path, color="#DD8452")  # fmt: skip


def plot_similarity(matrix: np.ndarray, path: Path, row_labels: Sequence[str] | None = None,
                    col_labels: Sequence[str] | None = None, title: str = "Observation-instruction similarity") -> Path:  # fmt: skip
    """Heat map of a (rows=observations, cols=instructions) similarity matrix."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"matrix: expected a 2-D similarity matrix, got shape {m.shape}")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(12, 2.5 + 0.45 * m.shape[1]), min(11, 2.0 + 0.4 * m.shape[0])),
                           layout="constrained")
    im = ax.imshow(m, cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if col_labels is not None:
        ax.set_xticks(range(m.shape[1]), [str(s)[:40] for s in col_labels], rotation=60, ha="right", fontsize=7)
    if row_labels is not None:
        ax.set_yticks(range(m.shape[0]), [str(s)[:40] for s in row_labels], fontsize=7)
    ax.set_xlabel("instruction")
    ax.set_ylabel("observation")
    ax.set_title(title)
    return _save(fig, path)


def plot_attention_maps(frames: Sequence[np.ndarray], maps: Sequence[np.ndarray], path: Path,
                        titles: Sequence[str] | None = None) -> Path:  # fmt: skip
    """Each frame (H, W, 3 RGB, or any image) with its (h, w) attention map overlaid, one column per step."""
    if len(frames) != len(maps) or not frames:
        raise ValueError(f"frames/maps: expected equal non-zero lengths, got {len(frames)} and {len(maps)}")
    plt = _plt()
    fig, axes = plt.subplots(1, len(frames), figsize=(3.0 * len(frames), 3.2), squeeze=False, layout="constrained")
    for k, (ax, frame, amap) in enumerate(zip(axes[0], frames, maps, strict=True)):
        a = np.asarray(amap, dtype=float)
        if a.ndim != 2:
            raise ValueError(f"maps[{k}]: expected a 2-D attention map, got shape {a.shape}")
        f = np.asarray(frame)
        h, w = f.shape[:2]
        if f.ndim == 3 and f.shape[2] == 3 and f.dtype == np.uint8 and f.max() > 20:
            ax.imshow(f, extent=(0, w, h, 0))
        else:  # symbolic grid: show the object-type channel
            ax.imshow(f[..., 0] if f.ndim == 3 else f, cmap="gray", extent=(0, w, h, 0))
        ax.imshow(a / (a.max() + 1e-12), cmap="jet", alpha=0.45, extent=(0, w, h, 0), interpolation="nearest")
        ax.set_axis_off()
        ax.set_title(titles[k] if titles else f"step {k}", fontsize=9)
    fig.suptitle("Attention over the image")
    return _save(fig, path)


def plot_subgroups(subgroups: Mapping[str, Mapping[str, Any]], path: Path, max_groups: int = 12,
                   rate_key: str = "success_rate", count_key: str = "episodes",
                   title: str = "Success per subgroup (95% Wilson CI)") -> Path | None:  # fmt: skip
    """One panel per subgroup labelling with the rate per group (at most ``max_groups`` each, largest first).

    Groups are dicts with ``group``, ``ci_low``, ``ci_high``, ``rate_key`` and ``count_key`` (success rates of
    episodes by default; offline bias passes ``accuracy`` and ``n``)."""
    keys = [k for k, v in subgroups.items() if len(v.get("groups", [])) > 1]
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.6), squeeze=False, layout="constrained")
    for ax, key in zip(axes[0], keys, strict=True):
        groups = sorted(subgroups[key]["groups"], key=lambda g: -g[count_key])[:max_groups]
        rate = np.array([g[rate_key] for g in groups])
        err = np.stack([rate - [g["ci_low"] for g in groups], np.array([g["ci_high"] for g in groups]) - rate])
        ax.barh(range(len(groups)), rate, xerr=np.clip(err, 0, None), capsize=3, color="#55A868")
        ax.set_yticks(range(len(groups)), [g["group"][:38] for g in groups], fontsize=7)
        ax.set_xlim(0, 1.05)
        ax.set_title(f"{key} (gap {subgroups[key]['gap']:.2f})", fontsize=10)
        ax.invert_yaxis()
    fig.suptitle(title)
    return _save(fig, path)


BALANCE_MEASURES: tuple[tuple[str, str], ...] = (
    ("ablation_share", "ablation (action metric)"),
    ("loss_ablation_share", "ablation (BC loss)"),
    ("gradient_share", "gradient norm"),
    ("gradient_x_input_share", "gradient × input"),
)


def plot_modality_balance(balance: Mapping[str, Any], path: Path) -> Path:
    """Grouped bars: for each modality, its share of each balance measure (shares of a measure sum to 1)."""
    mods = list(balance["modalities"])
    if not mods:
        raise ValueError("balance: expected at least one modality, got none")
    measures = [(k, label) for k, label in BALANCE_MEASURES if k in balance]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.5, 1.8 * len(mods) + 2.0), 3.6), layout="constrained")
    width = 0.8 / max(1, len(measures))
    x = np.arange(len(mods))
    for j, (key, label) in enumerate(measures):
        vals = [float(balance[key].get(m) or 0.0) for m in mods]
        ax.bar(x + (j - (len(measures) - 1) / 2) * width, vals, width, label=label)
    ax.set_xticks(x, mods)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share")
    ax.set_title("Modality balance on the held-out split")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_trajectories(paths: Mapping[str, Sequence[tuple[np.ndarray, bool]]], axes: Sequence[str], path: Path,
                      max_panels: int = 10) -> Path:
    """Closed-loop paths per task (one panel each, at most ``max_panels``): successes green, failures red; a dot
    at each start."""
    plt = _plt()
    tasks = list(paths)[:max_panels]
    cols = min(5, len(tasks))
    rows = (len(tasks) + cols - 1) // cols
    fig, grid = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows), squeeze=False)
    for ax in grid.ravel()[len(tasks):]:
        ax.axis("off")
    for ax, task in zip(grid.ravel(), tasks):
        for p, ok in paths[task]:
            ax.plot(p[:, 0], p[:, 1], color="tab:green" if ok else "tab:red", lw=0.8, alpha=0.6)
            ax.plot(p[0, 0], p[0, 1], "k.", ms=3)
        n_ok = sum(ok for _, ok in paths[task])
        ax.set_title(f"{task.split('/')[-1]} ({n_ok}/{len(paths[task])} ok)", fontsize=8)
        ax.set_xlabel(axes[0], fontsize=7)
        ax.set_ylabel(axes[1], fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_gif(frames: Sequence[np.ndarray], path: Path, fps: float = 4.0) -> Path:
    """Write frames (H, W, 3) uint8 as a looping GIF with imageio."""
    import imageio.v3 as iio

    if not frames:
        raise ValueError("frames: expected at least one frame, got none")
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.stack([np.asarray(f, dtype=np.uint8) for f in frames])
    iio.imwrite(path, arr, extension=".gif", duration=1000.0 / fps, loop=0)
    return path
