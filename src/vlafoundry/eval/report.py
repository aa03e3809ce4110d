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

Layout: the plots are :mod:`vlafoundry.eval.report_plots`, the Markdown + HTML document builder
:mod:`vlafoundry.eval.report_doc`; this module assembles the sections (every name is importable from here as before).
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.eval.report_doc import _CSS, _LOAD_SCRIPT, _ci, _Doc, _fmt  # noqa: F401 (re-exported)
from vlafoundry.eval.report_plots import (  # noqa: F401 (re-exported)
    BALANCE_MEASURES,
    _bar_with_ci,
    _plt,
    _save,
    plot_attention_maps,
    plot_modality_balance,
    plot_robustness,
    plot_similarity,
    plot_subgroups,
    plot_success_per_task,
    plot_training_curves,
    plot_trajectories,
    read_metrics,
    save_gif,
)
from vlafoundry.eval.task_groups import write_group_section

ASSETS = "report_assets"


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
        trajectories: ``({task: [(path (T, 2), success), ...]}, axis labels)``: closed-loop paths to plot
            (:func:`vlafoundry.eval.visuals.trajectory_paths`).
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
    trajectories: tuple[Mapping[str, Sequence[tuple[np.ndarray, bool]]], Sequence[str]] | None = None



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

    if inputs.trajectories is not None:
        paths, axes = inputs.trajectories
        doc.heading("Closed-loop trajectories")
        doc.image(plot_trajectories(paths, axes, assets / "trajectories.png"),
                  "Paths of the first episodes of each task, replayed from their seeds and actions "
                  "(green: success, red: failure; dots: starts)")

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
