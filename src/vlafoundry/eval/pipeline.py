"""The evaluation pipeline behind ``vlafoundry eval`` and ``vlafoundry quickstart``.

:func:`evaluate_checkpoint` (a checkpoint path and the values the user gave) loads the policy, resolves
:class:`~vlafoundry.eval.options.EvalOptions` (given > ``cfg.eval`` > defaults) and calls :func:`run_evaluation`,
which runs, in this order, each stage timed and announced on the terminal:

1. ``rollouts``: closed-loop episodes on vectorised envs (``eval.seed_start``, ``eval.workers``, ``eval.max_steps``
   honoured), then the paraphrased run (``--paraphrases``) on the same workers;
2. ``offline pass``: ONE pass over the held-out split for every offline measure (action accuracy, retrieval,
   ITM, and modality balance on its first ``balance_samples`` items);
3. ``robustness`` (``--robustness`` or ``--conditions``): every condition on the same workers; the full-input row
   reuses the rollouts and the offline pass of stages 1-2;
   ``generalisation`` (``--generalisation``): paraphrases, held-out pairs and a held-out template on the same
   workers (:mod:`vlafoundry.eval.generalisation`);
4. ``bias``: held-out accuracy per subgroup, from the outputs of stage 2;
5. ``pictures``: similarity heat map, attention maps, GIF replays;
6. ``report``: ``eval.json``, ``report.md``, ``report.html``.

It returns an :class:`EvalRun` (results, notes, output paths and per-stage seconds).

Layout: what is read from the run is :mod:`vlafoundry.eval.pipeline_inputs`, the offline stage
:mod:`vlafoundry.eval.pipeline_offline`; this module runs the stages and writes the results (every name is
importable from here as before).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlafoundry.eval.options import ACTING_KEYS, EvalError, EvalOptions, apply_acting
from vlafoundry.eval.pipeline_inputs import (  # noqa: F401 (re-exported)
    Log,
    _cfg_get,
    offline_dataset,
    run_dir_of,
    training_seed_ranges,
)
from vlafoundry.eval.pipeline_offline import (  # noqa: F401 (re-exported)
    _ITM_KEYS,
    EVAL_HOOKS,
    OFFLINE_BATCH_STEPS,
    _contract_offline_pass,
    _offline_pass,
    _OfflinePlan,
    has_eval_hooks,
    itm_verdict,
)
from vlafoundry.eval.rollout import EvalResult

__all__ = ["STAGES", "EvalRun", "evaluate_checkpoint", "itm_verdict", "offline_dataset", "run_dir_of",
           "run_evaluation"]  # fmt: skip

STAGES: tuple[str, ...] = ("rollouts", "offline pass", "robustness", "generalisation", "bias", "pictures", "report")


@dataclass
class EvalRun:
    """Everything one evaluation produced.

    Attributes:
        options: the resolved options.
        checkpoint: the checkpoint (or run) path evaluated.
        out: the folder written to.
        env: the environment or suite evaluated; ``env_kwargs`` the ``make_env`` keywords used.
        closed_loop: the closed-loop result; ``paraphrase`` the paraphrased run (or None).
        robustness: robustness rows (or None); ``generalisation``: the suite's probe rows (or None); ``offline``: ``{"dataset", "split", "metrics", "balance", "bias"}``
            (or None).
        notes: notes shown in the report (why a section is missing, caveats).
        payload: the content of ``eval.json``; ``report``: paths of ``markdown``, ``html``, ``assets``.
        stage_s: wall seconds per stage (:data:`STAGES`, those that ran), plus ``load`` when the checkpoint was
            loaded here.
    """

    options: EvalOptions
    checkpoint: Path
    out: Path
    env: str
    env_kwargs: dict[str, Any]
    closed_loop: EvalResult
    paraphrase: EvalResult | None = None
    robustness: list[dict[str, Any]] | None = None
    generalisation: list[dict[str, Any]] | None = None
    offline: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    payload: dict[str, Any] = field(default_factory=dict)
    report: dict[str, Path] = field(default_factory=dict)
    stage_s: dict[str, float] = field(default_factory=dict)



class _Stages:
    """Times named stages and announces them through ``log``."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, what: str = "") -> Iterator[None]:
        self.log(f"[eval] {name}{': ' + what if what else ''}")
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


def _rows_text(title: str, rows: list[dict[str, Any]]) -> str:
    lines = [f"{title}:"]
    for r in rows:
        lines.append(f"  {r['task']:<28} success {r['success_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
                     f"  length {r['mean_length']:.1f}  return {r['mean_return']:.3f}"
                     f"  ({r['episodes']} episodes)")  # fmt: skip
    return "\n".join(lines)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


# ------------------------------------------------------------------------------------------------------ pipeline


def evaluate_checkpoint(checkpoint: str | Path, given: Mapping[str, Any] | None = None, *,
                        label: Callable[[str], str] = lambda n: n, log: Log = print) -> EvalRun:  # fmt: skip
    """Evaluate a checkpoint (or run folder) with the ``given`` option values (None = not given).

    Bad values fail before anything runs, named by ``label(option)`` (the CLI passes ``--episodes``-style names)
    or ``eval.<key>`` for config values: :class:`~vlafoundry.eval.options.EvalError`.
    """
    from vlafoundry.eval.paraphrase import load_paraphrases

    given = {k: v for k, v in (given or {}).items() if v is not None}
    EvalOptions.check(given, label)
    paraphrases = None
    if given.get("paraphrases"):  # a bad paraphrase file fails before the model loads
        try:
            paraphrases = load_paraphrases(given["paraphrases"])
        except ValueError as exc:
            raise EvalError(f"{label('paraphrases')}: {exc}") from exc
    ckpt = Path(checkpoint)
    if not ckpt.exists():
        raise EvalError(f"CHECKPOINT: no such file or directory: {ckpt}")
    import vlafoundry.train.trainer

    t0 = time.perf_counter()
    policy, cfg, _ = vlafoundry.train.trainer.load_run(ckpt, device=given.get("device", "cpu"))
    load_s = time.perf_counter() - t0
    options = EvalOptions.resolve(given, cfg, label)
    run = run_evaluation(policy, cfg, options, checkpoint=ckpt, paraphrases=paraphrases, label=label, log=log)
    run.stage_s = {"load": load_s, **run.stage_s}
    return run


def run_evaluation(policy: Any, cfg: Any, options: EvalOptions, *, checkpoint: str | Path,
                   paraphrases: Any = None, label: Callable[[str], str] = lambda n: n, log: Log = print
                   ) -> EvalRun:  # fmt: skip
    """Run every stage for a loaded ``policy`` and its training ``cfg`` (see the module docstring).

    ``paraphrases``: an already loaded :class:`~vlafoundry.eval.paraphrase.ParaphraseMap` (else loaded from
    ``options.paraphrases``). ``checkpoint`` names the run in the report and locates the run folder.
    """
    from vlafoundry.envs import get_family
    from vlafoundry.eval.paraphrase import load_paraphrases
    from vlafoundry.eval.rollout import VectorRollout, _as_names, evaluate_policy

    opts = options
    if paraphrases is None and opts.paraphrases:
        try:
            paraphrases = load_paraphrases(opts.paraphrases)
        except ValueError as exc:
            raise EvalError(f"{label('paraphrases')}: {exc}") from exc
    ckpt = Path(checkpoint)
    notes: list[str] = []
    try:
        ds = offline_dataset(cfg, opts.offline, notes)
    except FileNotFoundError as exc:
        raise EvalError(f"{label('offline')}: {exc}") from exc
    env = opts.env or _cfg_get(cfg, "data", "env")
    if not env:
        raise EvalError(f"{label('env')}: the checkpoint does not say which environment it was trained on; "
                        f"pass {label('env')}")  # fmt: skip
    apply_acting(policy, opts, label)  # --action-selection, --flow-steps, --execute, ... on the policy's config
    env_kwargs: dict[str, Any] = dict(get_family(env).env_kwargs(cfg.data))
    if opts.max_steps:
        env_kwargs["max_steps"] = opts.max_steps  # the envs' own cap (truncation, BabyAI's return) = the rollouts'
    training_seeds = training_seed_ranges(cfg)
    names = _as_names(env)
    total = opts.episodes * len(names)
    num_envs = opts.num_envs or min(64, total)
    out = Path(opts.out) if opts.out else run_dir_of(ckpt)
    out.mkdir(parents=True, exist_ok=True)
    stage = _Stages(log)
    common: dict[str, Any] = {"episodes": opts.episodes, "seed_start": opts.seed_start,
                              "training_seeds": training_seeds, "max_steps": opts.env_max_steps}  # fmt: skip

    para = robustness = offline = generalisation = None
    conditions = None
    if opts.robustness or opts.conditions:  # checked against the policy before any episode runs
        conditions = _conditions(policy, names, env_kwargs, opts.conditions)
    with VectorRollout(num_envs, opts.workers, env_kwargs) as pool:
        with stage("rollouts", f"{total} episodes of {env} on {num_envs} envs, {pool.workers} workers"):
            result = evaluate_policy(policy, names, rollout=pool, progress="closed loop", **common)
            log(_rows_text("closed loop", result.rows))
            if result.task_groups is not None:
                from vlafoundry.eval.task_groups import group_lines

                log(group_lines(result.task_groups))
            if paraphrases is not None:
                para = evaluate_policy(policy, names, rollout=pool, paraphrases=paraphrases,
                                       progress="paraphrased instructions", **common)  # fmt: skip
                log(_rows_text("paraphrased instructions", para.rows))
        plan = _OfflinePlan.of(ds, opts) if ds is not None else None
        if plan is not None and not has_eval_hooks(policy):
            with stage("offline pass", f"{plan.max_items} held-out items through the policy's forward"):
                offline = _contract_offline_pass(policy, ds, plan, notes, log)
            ds = plan = None  # the per-modality measures below need the hooks
        if plan is not None:
            with stage("offline pass", plan.describe()):
                offline = _offline_pass(policy, cfg, ds, plan, env, notes, log)
        if conditions is not None:
            with stage("robustness", f"{len(conditions)} input conditions on the same episodes"):
                robustness = _robustness(policy, names, pool, env_kwargs, ds, plan, offline, result, common,
                                         conditions)  # fmt: skip
                for r in robustness:
                    log(f"  {r['condition']:<28} success {r['success_rate']:.3f}  Δ {r['delta_success']:+.3f}")
        if opts.generalisation:
            with stage("generalisation", "paraphrases, held-out pairs, held-out template vs in-distribution"):
                from vlafoundry.eval.generalisation import run_generalisation

                probes, gnotes = run_generalisation(policy, names, pool, result, episodes=opts.episodes, cfg=cfg,
                                                    paraphrases=paraphrases, paraphrased=para,
                                                    max_steps=opts.env_max_steps, log=log)  # fmt: skip
                generalisation = [p.to_dict() for p in probes]
                notes.extend(gnotes)
    if offline is not None and "_outputs" in offline:
        with stage("bias", "held-out accuracy per subgroup"):
            from vlafoundry.eval.offline import offline_bias

            offline["bias"] = offline_bias(policy, ds, outputs=offline.pop("_outputs"))

    with stage("pictures", "similarity, attention, GIFs"):
        from vlafoundry.eval.visuals import attention_frames, gif_specs, similarity, trajectory_paths

        sim, alignment = similarity(policy, result.episodes, env_kwargs, notes)
        attention = attention_frames(policy, result.episodes, env_kwargs, notes)
        gifs = gif_specs(result.episodes, env_kwargs, opts.gifs, notes)
        trajectories = (trajectory_paths(result.episodes, env_kwargs, per_task=max(5, 40 // len(names)))
                        if opts.gifs else None)  # with the GIFs (--gifs 0: neither)

    run = EvalRun(options=opts, checkpoint=ckpt, out=out, env=env, env_kwargs=env_kwargs, closed_loop=result,
                  paraphrase=para, robustness=robustness, offline=offline, notes=notes,
                  generalisation=generalisation)  # fmt: skip
    with stage("report", str(out)):
        _write(run, cfg, policy, sim, alignment, attention, gifs, trajectories)
    run.stage_s = stage.seconds
    log(f"wrote {out / 'eval.json'}, {run.report['markdown']}, {run.report['html']}")
    return run


def _conditions(policy: Any, names: list[str], env_kwargs: dict[str, Any], spec: str | None) -> list[Any]:
    """The robustness conditions (``--conditions``, else the defaults) checked against the policy before any
    episode runs: image rows only if it reads an image, pixel rows only if RGB."""
    from vlafoundry.eval.robustness import robustness_conditions

    try:
        return robustness_conditions(policy, names[0], env_kwargs, spec, what="--conditions")
    except ValueError as exc:
        raise EvalError(str(exc)) from None


def _robustness(policy: Any, names: list[str], pool: Any, env_kwargs: dict[str, Any], ds: Any,
                plan: _OfflinePlan | None, offline: dict[str, Any] | None, result: EvalResult, common: dict[str, Any],
                conditions: list[Any] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Robustness rows on the open pool; the full-input row reuses the rollouts and the offline pass."""
    from vlafoundry.eval.offline import ROBUSTNESS_KEYS, offline_robustness_fn
    from vlafoundry.eval.robustness import run_robustness

    offline_fn = None
    if ds is not None and plan is not None:
        keys = [k for k in ROBUSTNESS_KEYS if offline is None or offline["show_itm"] or k not in _ITM_KEYS]
        corrupted = offline_robustness_fn(policy, ds, batch_size=plan.batch_items, max_samples=plan.max_items,
                                          keys=keys)  # fmt: skip
        full = ({f"offline {k}": offline["metrics"][k] for k in keys if k in offline["metrics"]}
                if offline is not None else None)  # fmt: skip

        def offline_fn(cond: Any) -> Mapping[str, float]:
            return full if cond.is_identity and full is not None else corrupted(cond)

    return run_robustness(policy, names, conditions=conditions, rollout=pool, env_kwargs=env_kwargs,
                          offline_fn=offline_fn, reference=result, progress=True, **common)  # fmt: skip


def _write(run: EvalRun, cfg: Any, policy: Any, sim: Any, alignment: Any, attention: Any, gifs: list[Any],
           trajectories: Any = None) -> None:
    """``eval.json`` and the report into ``run.out``."""
    from vlafoundry.data.format import write_json_atomic
    from vlafoundry.eval.report import ReportInputs, write_report

    tables: dict[str, dict[str, Any]] = {}
    offline = run.offline
    if offline is not None:
        shown = {k: v for k, v in offline["metrics"].items() if offline["show_itm"] or k not in _ITM_KEYS}
        tables[f"Offline metrics (held-out split, {int(offline['metrics']['samples'])} samples)"] = shown
    if run.paraphrase is not None:
        s, p = run.closed_loop.summary, run.paraphrase.summary
        tables["Language generalisation (paraphrased instructions)"] = {
            "success (original)": s["success_rate"],
            "success (paraphrased)": p["success_rate"],
            "paraphrased 95% CI": f"[{p['ci_low']:.3f}, {p['ci_high']:.3f}]",
            "fraction of episodes rewritten": p["paraphrased_fraction"],
        }
    if run.generalisation:
        tables["Language generalisation suite (success [95% CI] vs in-distribution)"] = {
            f"{g['probe']} ({g['detail']})": (
                f"{g['success_rate']:.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}], {g['episodes']} ep; in-distribution "
                f"{g['in_dist_rate']:.3f} [{g['in_dist_ci_low']:.3f}, {g['in_dist_ci_high']:.3f}], "
                f"{g['in_dist_episodes']} ep; Δ {g['delta']:+.3f}")
            for g in run.generalisation}  # fmt: skip
    if alignment:
        tables["Alignment on evaluation episodes (first observation vs instruction)"] = alignment

    payload = run.closed_loop.to_dict()
    payload["checkpoint"] = str(run.checkpoint)
    payload["options"] = asdict(run.options)
    pcfg = getattr(policy, "cfg", None)
    if getattr(pcfg, "action_selection", None) is not None:  # how discrete actions were picked in these rollouts
        payload["action_selection"] = {"mode": pcfg.action_selection, "sample_temperature": pcfg.sample_temperature}
    if pcfg is not None and hasattr(pcfg, "flow_steps"):  # every acting-time setting of these rollouts
        payload["acting"] = {k: getattr(pcfg, k) for k in ACTING_KEYS if hasattr(pcfg, k)}
    if run.paraphrase is not None:
        payload["paraphrase"] = run.paraphrase.to_dict()
    if run.robustness is not None:
        payload["robustness"] = run.robustness
    if run.generalisation is not None:
        payload["generalisation"] = run.generalisation
    if alignment:
        payload["alignment"] = alignment
    if offline is not None:
        payload["offline"] = {k: v for k, v in offline.items() if k != "show_itm"}
    write_json_atomic(run.out / "eval.json", payload, default=_json_default)
    run.payload = payload
    run.report = write_report(
        run.out,
        ReportInputs(
            eval_result=payload,
            run_dir=run_dir_of(run.checkpoint),
            robustness=run.robustness,
            tables=tables,
            similarity=sim,
            attention=attention,
            gifs=gifs,
            notes=run.notes,
            title=f"Evaluation of {run.checkpoint.name} on {run.env}",
            balance=offline["balance"] if offline else None,
            offline_bias=offline["bias"] if offline else None,
            trajectories=trajectories,
        ),
    )
