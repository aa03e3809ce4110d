"""Evaluation report: ``report.md`` plus a self-contained ``report.html`` (images inlined as base64 data URIs).

Plots are PNGs made with matplotlib's Agg backend and saved under ``<out>/report_assets/`` (``report.md`` links
them there; ``report.html`` embeds them, so it can be mailed or opened anywhere on its own). Sections, each present
only when its data is given:

* summary and per-task table (success rate, 95% Wilson interval, mean length, mean return);
* success per benchmark task group (Meta-World MT50's difficulty groups) beside the published rows
  (:mod:`vlafoundry.eval.task_groups`);
* training / validation curves from ``RUN/metrics.jsonl`` (every numeric key, one panel per key, one line per split);
* success per task with Wilson intervals (bar chart);
* subgroup success (template / object / colour / task) with the worst-to-best gap;
* robustness table and bar chart (full input vs each modality removed / noised, and for RGB policies the image
  occluded, colour-jittered, shifted or with Gaussian noise), with a line on what the image rows show;
* extra metric tables (e.g. offline action accuracy, retrieval recall@k, ITM accuracy);
* modality balance on the held-out split (table and grouped bar chart of ablation / gradient shares; the image
  labelled RGB or symbolic), with a line on whether the policy uses its image;
* held-out action accuracy per subgroup with Wilson intervals and the worst-to-best gap;
* observation-instruction similarity heat map (from a given matrix);
* attention over the image for a few steps (given frames and attention maps);
* GIFs of successful and failed episodes.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.eval.task_groups import write_group_section

ASSETS = "report_assets"

# Records, once the page has loaded, every image's natural width (0 = failed to load) in data-natural-width and a
# summary in <body data-images-loaded="k/n">; tools and tests read these from the rendered DOM.
_LOAD_SCRIPT = """<script>
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img"), ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    imgs[i].setAttribute("data-natural-width", String(imgs[i].naturalWidth));
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.body.setAttribute("data-images-loaded", ok + "/" + imgs.length);
});
</script>"""

_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;
padding:.25em .6em;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto}figure{display:inline-block;margin:.4em;vertical-align:top}
figcaption{font-size:.85em;color:#555;max-width:320px}code{background:#f5f5f5;padding:0 .2em}"""


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


def save_gif(frames: Sequence[np.ndarray], path: Path, fps: float = 4.0) -> Path:
    """Write frames (H, W, 3) uint8 as a looping GIF with imageio."""
    import imageio.v3 as iio

    if not frames:
        raise ValueError("frames: expected at least one frame, got none")
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.stack([np.asarray(f, dtype=np.uint8) for f in frames])
    iio.imwrite(path, arr, extension=".gif", duration=1000.0 / fps, loop=0)
    return path


# --------------------------------------------------------------------------------------------------- report


@dataclass
class GifSpec:
    """A GIF for the report: frames and a caption (e.g. the instruction and the outcome)."""

    frames: Sequence[np.ndarray]
    caption: str


@dataclass
class ReportInputs:
    """Everything the report can show; only ``eval_result`` is required.

    Attributes:
        eval_result: ``EvalResult.to_dict()`` (rows, subgroups, config, ...).
        run_dir: run folder whose ``metrics.jsonl`` gives the training curves.
        robustness: rows from :func:`vlafoundry.eval.robustness.run_robustness`.
        tables: extra metric tables ``{title: {metric: value}}`` (offline accuracy, recall@k, modality balance, ...).
        similarity: ``(matrix (R, C), row_labels, col_labels)``.
        attention: ``(frames, maps, titles)`` for a few steps.
        gifs: episodes to show as GIFs.
        notes: free-text lines shown under the summary (e.g. why a section is missing).
        balance: :func:`vlafoundry.eval.offline.modality_balance` result (table and bar chart).
        offline_bias: :func:`vlafoundry.eval.offline.offline_bias` result (held-out accuracy per subgroup).
    """

    eval_result: Mapping[str, Any]
    run_dir: Path | None = None
    robustness: Sequence[Mapping[str, Any]] | None = None
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    similarity: tuple[np.ndarray, Sequence[str] | None, Sequence[str] | None] | None = None
    attention: tuple[Sequence[np.ndarray], Sequence[np.ndarray], Sequence[str] | None] | None = None
    gifs: Sequence[GifSpec] = ()
    notes: Sequence[str] = ()
    title: str = "vlafoundry evaluation report"
    balance: Mapping[str, Any] | None = None
    offline_bias: Mapping[str, Any] | None = None


class _Doc:
    """Builds the Markdown and HTML documents side by side."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.md: list[str] = []
        self.html: list[str] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.md.append(f"{'#' * level} {text}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str) -> None:
        self.md.append(text + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cells = [[_fmt(c) for c in r] for r in rows]
        self.md.append("| " + " | ".join(header) + " |")
        self.md.append("|" + "|".join(["---"] * len(header)) + "|")
        self.md.extend("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells)
        self.md.append("")
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in cells)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, path: Path, caption: str) -> None:
        rel = path.relative_to(self.out).as_posix()
        self.md.append(f"![{caption}]({rel})\n")
        mime = "image/gif" if path.suffix.lower() == ".gif" else "image/png"
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.html.append(
            f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return "" if v is None else str(v)


def _ci(r: Mapping[str, Any]) -> str:
    return f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def write_report(out_dir: str | Path, inputs: ReportInputs) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``report_assets/*`` into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    assets = out / ASSETS
    assets.mkdir(parents=True, exist_ok=True)
    doc = _Doc(out)
    res = inputs.eval_result
    rows = list(res.get("rows", []))
    cfg = res.get("config", {})

    doc.heading(inputs.title, 1)
    if cfg:
        doc.para(
            f"Environments: {', '.join(cfg.get('env', []))}; {cfg.get('episodes_per_task')} episodes per task; "
            f"seeds from {cfg.get('seed_start')}; {cfg.get('num_envs')} env slots on {cfg.get('workers')} workers; "
            f"observations: {cfg.get('corruption', 'full input')}"
            + (f"; paraphrases: {cfg['paraphrases']}" if cfg.get("paraphrases") else "")
            + "."
        )
    for note in [cfg.get("seed_note"), *inputs.notes]:
        if note:
            doc.para(f"Note: {note}")

    doc.heading("Closed-loop success")
    doc.table(
        ["task", "episodes", "success rate", "95% Wilson CI", "mean length", "mean return"],
        [[r["task"], r["episodes"], r["success_rate"], _ci(r), r["mean_length"], r["mean_return"]] for r in rows],
    )
    if len(rows) > 1:
        doc.image(plot_success_per_task(rows, assets / "success_per_task.png"), "Success per task (95% Wilson CI)")
    if any(r.get("paraphrased_fraction") for r in rows):
        doc.para(
            "Instructions rewritten by the paraphrase file: "
            + ", ".join(f"{r['task']} {r['paraphrased_fraction']:.0%}" for r in rows)
        )

    if res.get("task_groups"):
        write_group_section(doc, res["task_groups"])

    if inputs.run_dir is not None and (Path(inputs.run_dir) / "metrics.jsonl").is_file():
        metrics = read_metrics(Path(inputs.run_dir) / "metrics.jsonl")
        png = plot_training_curves(metrics, assets / "training_curves.png")
        if png is not None:
            doc.heading("Training")
            doc.image(png, "Training and validation curves (metrics.jsonl)")

    subgroups = res.get("subgroups") or {}
    if subgroups:
        doc.heading("Success per subgroup (bias)")
        doc.table(
            ["labelling", "groups", "worst", "best", "worst-to-best gap"],
            [[k, len(v["groups"]), v["worst"], v["best"], v["gap"]] for k, v in subgroups.items()],
        )
        for key, v in subgroups.items():
            if len(v["groups"]) > 1:
                doc.heading(f"By {key}", 3)
                doc.table(
                    [key, "episodes", "success rate", "95% Wilson CI"],
                    [[g["group"], g["episodes"], g["success_rate"], _ci(g)] for g in v["groups"]],
                )
        png = plot_subgroups(subgroups, assets / "subgroups.png")
        if png is not None:
            doc.image(png, "Success per subgroup")

    if inputs.robustness:
        rob = list(inputs.robustness)
        doc.heading("Robustness to missing, noisy and corrupted inputs")
        doc.para(_robustness_text(rob))
        extra = [k for k in rob[0] if k not in _ROBUST_COLS and k != "condition"]
        doc.table(
            ["condition", "episodes", "success rate", "95% Wilson CI", "Δ success", "mean length", *extra],
            [[r["condition"], r["episodes"], r["success_rate"], _ci(r), r["delta_success"], r["mean_length"],
              *[r.get(k) for k in extra]] for r in rob],  # fmt: skip
        )
        doc.image(plot_robustness(rob, assets / "robustness.png"), "Success per input condition (95% Wilson CI)")

    for title, table in inputs.tables.items():
        doc.heading(title)
        doc.table(["metric", "value"], [[k, v] for k, v in table.items()])

    if inputs.balance:
        _balance_section(doc, inputs.balance, assets)
    if inputs.offline_bias:
        _offline_bias_section(doc, inputs.offline_bias, assets)

    if inputs.similarity is not None:
        matrix, rlab, clab = inputs.similarity
        doc.heading("Observation-instruction similarity")
        doc.image(plot_similarity(matrix, assets / "similarity.png", rlab, clab),
                  "Cosine similarity between observation and instruction embeddings")  # fmt: skip

    if inputs.attention is not None:
        frames, maps, titles = inputs.attention
        doc.heading("Attention over the image")
        doc.image(plot_attention_maps(frames, maps, assets / "attention.png", titles), "Attention maps")

    if inputs.gifs:
        doc.heading("Episodes")
        for k, gif in enumerate(inputs.gifs):
            doc.image(save_gif(gif.frames, assets / f"episode_{k:02d}.gif"), gif.caption)

    md_path = out / "report.md"
    md_path.write_text("\n".join(doc.md) + "\n", encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(inputs.title)}</title><link rel=\"icon\" href=\"data:,\">"
        f"<style>{_CSS}</style></head><body>\n" + "\n".join(doc.html) + f"\n{_LOAD_SCRIPT}\n</body></html>\n",
        encoding="utf-8",
    )
    return {"markdown": md_path, "html": html_path, "assets": assets}


def _robustness_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """What the rows are, and what the image rows say about the policy's use of its image."""
    text = ("Every row runs the same episodes (same seeds) as the full-input row; Δ success is against it. A removed "
            "input is marked absent and zeroed; image corruptions (RGB only) are drawn per episode (occluding "
            "mid-grey square, colour jitter, shifted view) or per step (Gaussian and cell noise).")  # fmt: skip
    image = [r for r in rows[1:] if "image" in str(r["condition"])]
    if image:
        worst, ref = min(image, key=lambda r: r["delta_success"]), rows[0]
        text += (f" Does the policy use its eyes? Of the {len(image)} image rows, the largest change in success is "
                 f"{float(worst['delta_success']):+.3f} ({worst['condition']}: {_fmt(worst['success_rate'])} "
                 f"[{_fmt(worst['ci_low'])}, {_fmt(worst['ci_high'])}] against {_fmt(ref['success_rate'])} "
                 f"[{_fmt(ref['ci_low'])}, {_fmt(ref['ci_high'])}] with {ref['condition']}); a policy that ignores its "
                 "image loses nothing in any of them.")
    return text


def _modality_label(bal: Mapping[str, Any], m: str) -> str:
    kind = bal.get("image_input") if m == "image" else None
    return f"image ({'RGB pixels' if kind == 'rgb' else 'symbolic grid'})" if kind else m


def _balance_section(doc: _Doc, bal: Mapping[str, Any], assets: Path) -> None:
    metric = bal["metric"]
    doc.heading("Modality balance (held-out split)")
    doc.para(
        f"{metric} with all inputs: {_fmt(bal['metric_full'])} on {bal['samples']} samples. Ablation: the modality is "
        "marked absent; its share is |change| over the sum of all modalities' |change|. Gradient: norm of the "
        "behaviour-cloning loss gradient with respect to the modality's token features, as a share. "
        f"Dominant modality: {bal['dominant_modality']}."
    )
    if "image" in bal["modalities"]:
        drop = bal["ablation_drop"]["image"]
        doc.para(f"Does the policy use its eyes? Without the {_modality_label(bal, 'image')}, {metric} "
                 f"{'falls' if drop >= 0 else 'rises'} by {_fmt(abs(drop))} (ablation share "
                 f"{_fmt(bal['ablation_share']['image'])}, gradient share {_fmt(bal['gradient_share']['image'])}); "
                 "a policy that ignores its image scores about 0 on all three.")  # fmt: skip
    doc.table(
        ["modality", f"{metric} without it", "ablation drop", "ablation share", "loss ablation share",
         "gradient share", "gradient × input share"],
        [[_modality_label(bal, m), bal["metric_ablated"][m], bal["ablation_drop"][m], bal["ablation_share"][m],
          bal["loss_ablation_share"][m], bal["gradient_share"][m], bal["gradient_x_input_share"][m]]
         for m in bal["modalities"]],
    )  # fmt: skip
    if bal["modalities"]:
        doc.image(plot_modality_balance(bal, assets / "modality_balance.png"), "Modality balance: share per measure")


def _offline_bias_section(doc: _Doc, bias: Mapping[str, Any], assets: Path) -> None:
    by = bias["by"]
    doc.heading("Held-out accuracy per subgroup (bias)")
    doc.para(f"Measure: {bias['measure']} over {bias['entries']} action steps of the held-out split; overall "
             f"{_fmt(bias['overall'])} [{bias['overall_ci'][0]:.3f}, {bias['overall_ci'][1]:.3f}].")  # fmt: skip
    doc.table(["labelling", "groups", "worst", "best", "worst-to-best gap"],
              [[k, len(v["groups"]), v["worst"], v["best"], v["gap"]] for k, v in by.items()])  # fmt: skip
    for key, v in by.items():
        if len(v["groups"]) > 1:
            doc.heading(f"Held-out accuracy by {key}", 3)
            extra = ["mean L1"] if "mean_l1" in v["groups"][0] else []
            doc.table([key, "action steps", "accuracy", "95% Wilson CI", *extra],
                      [[g["group"], g["n"], g["accuracy"], _ci(g), *([g["mean_l1"]] if extra else [])]
                       for g in v["groups"]])  # fmt: skip
    png = plot_subgroups(by, assets / "offline_subgroups.png", rate_key="accuracy", count_key="n",
                         title="Held-out accuracy per subgroup (95% Wilson CI)")  # fmt: skip
    if png is not None:
        doc.image(png, "Held-out accuracy per subgroup")


_ROBUST_COLS = {"episodes", "successes", "success_rate", "ci_low", "ci_high", "mean_length", "mean_return",
                "delta_success"}  # fmt: skip
