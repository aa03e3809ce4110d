"""The training loop: one readable step, checkpoints that resume exactly, DDP through torchrun.

``run_phase(cfg, run_dir, phase)`` trains either the behaviour-cloning phase (``phase="train"``, settings in
``cfg.train`` and objective weights in ``cfg.loss``) or alignment pretraining (``phase="pretrain"``, settings
and weights in ``cfg.pretrain``). A run directory holds::

    config.yaml            the resolved configuration
    metrics.jsonl          one JSON object per log/validation step
    tb/                    TensorBoard event files
    checkpoints/step_XXXXXXX/ + checkpoints/latest     (see vlafoundry.train.checkpoint)
    summary.json           final step, losses, wall time, samples/s
    cycles/cycle_K/        with ``train.restarts``: the earlier cosine cycles, each a run directory like this one
    cycles.json            with ``train.restarts``: one summary per finished cycle

``fit_phase`` runs the behaviour-cloning cycles (``train.steps``, then one fresh-optimiser cycle per
``train.restarts`` entry, each from the previous cycle's weights; the last cycle in the run directory itself, so
``vlafoundry eval RUN_DIR`` evaluates the final weights).

Resume is exact: a run stopped after a checkpoint and started again with the same command ends with the same
weights as one never stopped (weights, AdamW moments, schedule position, RNG states and data order are saved).

Layout: the optimiser and schedule are :mod:`vlafoundry.train.optim`, the dataset and checkpoint loading
:mod:`vlafoundry.train.inputs`, the cosine cycles with ``fit_phase`` / ``run_phase`` :mod:`vlafoundry.train.cycles`;
this module holds :class:`Trainer` (every name is importable from here as before).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vlafoundry.config import ConfigError, dump_yaml, from_dict, to_dict
from vlafoundry.data.instruction_variants import WithVariantTexts
from vlafoundry.io import read_json, write_json_atomic
from vlafoundry.models import make_policy
from vlafoundry.models.policy import count_parameters
from vlafoundry.nn._checks import set_check_finite
from vlafoundry.train import checkpoint as ckpt
from vlafoundry.train.config import ExperimentConfig, LossConfig, OptimConfig
from vlafoundry.train.config import apply_dataset_metadata, format_changes, init_from_changes, resume_changes
from vlafoundry.train.distributed import DistInfo, all_reduce_mean, barrier, broadcast_flag, init_distributed
from vlafoundry.train.inputs import ensure_dataset, load_datasets, load_run, policy_from_checkpoint  # noqa: F401
from vlafoundry.train.labels import make_labeller
from vlafoundry.train.optim import build_optimizer, lr_factor
from vlafoundry.train.sampler import ResumableBatchSampler

_CYCLES = ("cycle_configs", "cycle_dirs", "fit_phase", "phase_finished", "run_phase")  # in train/cycles.py


class NonFiniteError(RuntimeError):
    """Raised by ``train.check_finite`` when a loss or gradient stops being finite."""


def scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """Metric tensors (0-d) -> Python floats, with one device-to-host copy for all of them."""
    keys = [k for k, v in metrics.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in metrics.items() if k not in keys}
    if keys:
        values = torch.stack([metrics[k].detach().float().reshape(()) for k in keys]).cpu().tolist()
        out.update(zip(keys, values))
    return out


def _batch_to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------- the loop
def _instruction_variants(cfg: ExperimentConfig) -> Any:
    """The :class:`~vlafoundry.data.instruction_variants.InstructionVariants` of ``data.instruction_variants``, or
    None; a missing or malformed file is a :class:`ConfigError` naming it."""
    if not cfg.data.instruction_variants:
        return None
    from vlafoundry.data.instruction_variants import load_variants

    try:
        return load_variants(cfg.data.instruction_variants, cfg.data.instruction_variant_p)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc) if str(exc).startswith("data.") else f"data.instruction_variants: {exc}") from None


def _batch_augmentation(cfg: ExperimentConfig, variants: Any) -> Any:
    """The training-batch augmentation of ``cfg.data``: the env family's (``data.augment``), then ``variants``
    (after a colour permutation, so the relabelled mission is what gets rephrased); None when there is neither.
    Called as ``augment(batch, generator)``."""
    steps = []
    if cfg.data.augment != "none":
        from vlafoundry.envs import get_family

        steps.append(get_family(cfg.data.env).augmentation(cfg.data.augment, cfg.data))
    if variants is not None:
        steps.append(variants)
    if len(steps) <= 1:
        return steps[0] if steps else None

    def chained(batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, Any]:
        for step in steps:
            batch = step(batch, generator)
        return batch

    return chained


class Trainer:
    """Owns the model, optimiser, data order and run directory of one training phase."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, phase: str = "train",
                 init_from: str | Path | None = None, resume: bool = True, dist_info: DistInfo | None = None,
                 dataset_root: str | Path | None = None) -> None:
        if phase not in ("train", "pretrain"):
            raise ValueError(f"phase: expected 'train' or 'pretrain', got {phase!r}")
        self.cfg, self.phase = cfg, phase
        self.run_dir = Path(run_dir)
        self.ck_dir = self.run_dir / "checkpoints"
        self.dist = dist_info or init_distributed(cfg.train.device)
        self.device = self.dist.device
        self.opt_cfg: OptimConfig = cfg.pretrain if phase == "pretrain" else cfg.train
        self.loss_cfg: LossConfig = cfg.pretrain.loss if phase == "pretrain" else cfg.loss
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        set_check_finite(cfg.train.check_finite)
        torch.manual_seed(cfg.train.seed)  # the same seed on every rank: identical init (DDP also broadcasts)
        np.random.seed(cfg.train.seed)

        root = Path(dataset_root) if dataset_root else ensure_dataset(cfg, self.dist, cfg.train.progress)
        note = apply_dataset_metadata(cfg, root)  # the dataset's vlafoundry.json is the truth about it
        if note and self.dist.is_main:
            print(note, flush=True)
        self.train_ds, self.val_ds = load_datasets(cfg, root)
        self._variants = _instruction_variants(cfg)
        self._augment = _batch_augmentation(cfg, self._variants)

        self.step = 0
        self.best_val = float("inf")
        self.evals_without_improvement = 0
        resume_dir = self._resumable_checkpoint() if resume else None
        self.resumed_from_step: int | None = None
        if resume_dir is not None:
            try:
                self.policy, _, data = policy_from_checkpoint(resume_dir, self.device)
            except ckpt.CorruptCheckpointError as exc:
                raise self._corrupt_resume_error(exc) from None
            self._check_resume_config(resume_dir, data, init_from)
        elif init_from is not None:
            self.policy, init_cfg, _ = policy_from_checkpoint(init_from, self.device)
            self._apply_init_config(init_cfg.model, init_from)
        else:
            # with instruction variants, the policy's texts (a scratch tokenizer, its spec) include them
            texts = self.train_ds if self._variants is None else WithVariantTexts(self.train_ds, self._variants)
            self.policy = make_policy(cfg.model, texts, self.loss_cfg).to(self.device)
        self.policy.check_objectives(self.loss_cfg)
        # training-only labels; the position replay (cached in the dataset's labels/) runs on the first rank only,
        # the others wait for it and read the cache
        first = self.dist.is_main
        self._labeller = make_labeller(self.cfg.data.env, self.policy, self.loss_cfg, self.train_ds) if first else None
        barrier(self.dist)
        if not first:
            self._labeller = make_labeller(self.cfg.data.env, self.policy, self.loss_cfg, self.train_ds)
        self.optimizer = build_optimizer(self.policy, self.opt_cfg)
        self.sampler = ResumableBatchSampler(len(self.train_ds), self.opt_cfg.batch_size, seed=cfg.train.seed,
                                             rank=self.dist.rank, world_size=self.dist.world_size)
        if resume_dir is not None:
            self._restore(resume_dir, data)
        self.model: nn.Module = self.policy
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = nn.parallel.DistributedDataParallel(self.policy, device_ids=ids,
                                                             find_unused_parameters=True)
        if cfg.train.compile:
            # Compile the tensor-only parts in place (state-dict keys unchanged); the policy's own forward holds
            # Python-side work (instruction tokenisation, batch checks) that would only cause graph breaks.
            for part in self.policy.compilable_modules():
                part.compile(dynamic=True)
        self.autocast_dtype = self._autocast_dtype()
        self._writer = None

    # ------------------------------------------------------------------ set-up helpers
    def _labelled(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``batch`` with the training-only targets of ``loss.cells`` / ``loss.positions`` (:mod:`.labels`)."""
        return batch if self._labeller is None else self._labeller(batch)

    def _augment_generator(self) -> torch.Generator:
        """The augmentation's random stream for this step: a function of (train.seed, rank, step) only, so a
        resumed run draws what the uninterrupted one drew."""
        seed = np.random.SeedSequence([self.cfg.train.seed, self.dist.rank, self.step]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(seed[0]) << 32 | int(seed[1]))

    def _autocast_dtype(self) -> torch.dtype | None:
        prec = self.cfg.train.precision
        if prec == "fp32":
            return None
        if prec == "bf16":
            return torch.bfloat16
        if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None  # CPU: fp32 (bf16 autocast is slower than fp32 on most CPUs)

    def _resumable_checkpoint(self) -> Path | None:
        if not self.ck_dir.exists():
            return None
        try:
            return ckpt.resolve_checkpoint(self.ck_dir)
        except ckpt.CheckpointError:
            return None

    def _corrupt_resume_error(self, exc: ckpt.CorruptCheckpointError) -> ckpt.CheckpointError:
        if exc.fallback is not None:
            how = (f"to resume from {exc.fallback.name}, move the corrupt {exc.corrupt} out of {self.ck_dir} (or "
                   f"delete it) and rerun this command; or start over with --no-resume")
        else:
            how = "start over with --no-resume (or another --out)"
        return ckpt.CheckpointError(f"cannot resume {self.run_dir}: {exc}; {how}")

    def _apply_init_config(self, init_model: Any, init_from: str | Path) -> None:
        """``--init-from``: the architecture comes from the checkpoint (keeping the run's config truthful); the run's
        own training/acting keys (``MODEL_RUNTIME_KEYS``, e.g. ``model.image_shift``) apply to the loaded policy."""
        kept, applied = init_from_changes(init_model, self.cfg.model)
        for key, _, new in applied:
            setattr(init_model, key[len("model."):], new)
            setattr(self.policy.cfg, key[len("model."):], new)
        self.cfg.model = init_model
        if self.dist.is_main and (kept or applied):
            print(f"note: --init-from {init_from}: " + "; ".join(
                part for part in (f"applying {format_changes(applied)}" if applied else "",
                                  f"keeping the checkpoint's architecture ({format_changes(kept)} ignored)" if kept
                                  else "") if part), flush=True)

    def _check_resume_config(self, directory: Path, data: dict[str, Any], init_from: str | Path | None) -> None:
        """Refuse a resume whose config changes the architecture or the data; say which other changes apply."""
        saved = from_dict(ExperimentConfig, data["config"])
        if init_from is not None:
            # with --init-from the architecture is the init checkpoint's, as on start (named, then ignored); the
            # run's training/acting keys stay, so changing one on resume is refused below like any model.* change
            kept, runtime = init_from_changes(saved.model, self.cfg.model)
            self.cfg.model = dataclasses.replace(saved.model, **{k[len("model."):]: new for k, _, new in runtime})
            if kept and self.dist.is_main:
                print(f"note: resuming a run started --init-from {init_from}: keeping its architecture "
                      f"({format_changes(kept)} ignored)", flush=True)
        refused, applied = resume_changes(saved, self.cfg, self.phase)
        step = int(data["state"].get("step", 0))
        if refused:
            raise ConfigError(
                f"cannot resume {self.run_dir} from step {step} ({directory}) with a different architecture or "
                f"dataset: {format_changes(refused)}; its checkpoints were trained with the old values. Resume with "
                "the old values, or train the new config in another run directory (--out) or here from scratch "
                "(--no-resume, which replaces this run's checkpoints)")
        self.resumed_from_step = step
        if self.dist.is_main:
            print(f"resumed from step {step} ({directory})"
                  + (f"; applying changed keys: {format_changes(applied)}" if applied else ""), flush=True)

    def _drop_metrics_after(self, step: int) -> None:
        """Rows logged after the resumed checkpoint (by the interrupted run) are logged again: drop the old ones."""
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return
        lines = path.read_text().splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                if int(json.loads(line)["step"]) > step:
                    continue
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by the interruption
            keep.append(line if line.endswith("\n") else line + "\n")
        if keep != lines:
            ckpt.write_atomic_text(path, "".join(keep))

    def _restore(self, directory: Path, data: dict[str, Any]) -> None:
        state = data["state"]
        if state.get("phase") != self.phase:
            raise ckpt.CheckpointError(f"{directory}: checkpoint of phase {state.get('phase')!r}, "
                                       f"cannot resume phase {self.phase!r} from it")
        ckpt.load_optimizer_state(directory, self.optimizer, state)
        for group, decay in zip(self.optimizer.param_groups, (self.opt_cfg.weight_decay, 0.0), strict=True):
            group["weight_decay"], group["betas"] = decay, tuple(self.opt_cfg.betas)  # the run's (maybe changed) values
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.best_val = float(state.get("best_val", float("inf")))
        self.evals_without_improvement = int(state.get("evals_without_improvement", 0))
        if self.dist.world_size == int(state.get("world_size", 1)):
            ckpt.load_rng_state(directory, state)

    @property
    def writer(self):
        if self._writer is None and self.dist.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:  # tensorboard is a declared dependency; degrade gracefully if removed
                self._writer = False
        return self._writer or None

    # ------------------------------------------------------------------ logging and checkpoints
    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        w = self.writer
        if w is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step",):
                    w.add_scalar(f"{record.get('split', 'train')}/{k}", v, record["step"])

    def save(self) -> Path | None:
        if not self.dist.is_main:
            barrier(self.dist)
            return None
        state = {
            "phase": self.phase,
            "step": self.step,
            "sampler": self.sampler.state_dict(),
            "best_val": self.best_val,
            "evals_without_improvement": self.evals_without_improvement,
            "world_size": self.dist.world_size,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        name = f"step_{self.step:07d}"
        d = ckpt.save_checkpoint(self.ck_dir / name, model_state=self.policy.state_dict(),
                                 config=to_dict(self.cfg), state=state, optimizer=self.optimizer,
                                 extra={**self.policy.processor.to_json(), "policy": self.policy.policy_state()})
        ckpt.write_atomic_text(self.ck_dir / "latest", name)
        ckpt.prune_checkpoints(self.ck_dir, self.cfg.train.keep_checkpoints)
        barrier(self.dist)
        return d

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        if self.val_ds is None:
            return {}
        self.policy.eval()
        n = len(self.val_ds)
        bs = self.opt_cfg.batch_size
        g = torch.Generator().manual_seed(12345)
        order = torch.randperm(n, generator=g)
        totals: dict[str, torch.Tensor] = {}
        count = 0
        with torch.random.fork_rng(devices=[]):  # validation must not move the training RNG (exact resume)
            for i in range(min(self.cfg.train.val_batches, math.ceil(n / bs))):
                idx = order[i * bs:(i + 1) * bs].tolist()
                batch = _batch_to_device(self._labelled(self.val_ds.__getitems__(idx)), self.device)
                with self._autocast():
                    _, m = self.policy(batch, self.loss_cfg)
                for k, v in m.items():
                    totals[k] = totals.get(k, 0.0) + v * len(idx)
                count += len(idx)
        self.policy.train()
        return {k: all_reduce_mean(v / max(count, 1), self.dist) for k, v in scalars(totals).items()}

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ non-finite guard
    def _nonfinite_parameters(self) -> str:
        """``"; non-finite parameters: [...]"`` naming every parameter holding NaN/inf, or ``""``."""
        bad = [name for name, p in self.policy.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
        return f"; non-finite parameters: {bad}" if bad else ""

    def _check_finite_step(self, loss: torch.Tensor, metrics: dict[str, float]) -> None:
        if not torch.isfinite(loss):
            bad = [k for k, v in scalars(metrics).items() if not math.isfinite(v)]
            raise NonFiniteError(f"step {self.step}: loss is {float(loss.detach())} "
                                 f"(non-finite terms: {bad or ['loss']}){self._nonfinite_parameters()}")
        for name, p in self.policy.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                raise NonFiniteError(f"step {self.step}: gradient of {name!r} has non-finite values"
                                     f"{self._nonfinite_parameters()}")

    def _forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The training forward; under ``train.check_finite`` a layer's non-finite input becomes NonFiniteError."""
        try:
            with self._autocast():
                return self.model(batch, self.loss_cfg)  # scalar, dict
        except ValueError as exc:
            if self.cfg.train.check_finite and "expected finite values" in str(exc):
                raise NonFiniteError(f"step {self.step}: {exc}{self._nonfinite_parameters()}") from exc
            raise

    # ------------------------------------------------------------------ main loop
    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``opt.steps`` (or ``stop_after`` more steps, used by tests to simulate an interruption)."""
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_yaml(self.cfg, self.run_dir / "config.yaml")
            if self.resumed_from_step is not None:
                self._drop_metrics_after(self.resumed_from_step)
        opt, total_steps = self.opt_cfg, self.opt_cfg.steps
        end = total_steps if stop_after is None else min(total_steps, self.step + stop_after)
        previous = self.run_dir / "summary.json"
        if self.step >= total_steps and previous.exists():
            # finished earlier (a rerun of the same command): keep the record of the run that did the work
            return read_json(previous)
        self.policy.train()
        bar = None
        if self.cfg.train.progress and self.dist.is_main:
            from vlafoundry.progress import progress

            bar = progress(total_steps, self.phase, "step", initial=self.step)
        t0, samples, stopped_early = time.perf_counter(), 0, False
        window_t, window_samples = time.perf_counter(), 0
        last: dict[str, torch.Tensor] = {}
        while self.step < end:
            idx = self.sampler.next_batch()
            batch = self._labelled(self.train_ds.__getitems__(idx))  # (B_local, ...)
            if self._augment is not None:
                batch = self._augment(batch, self._augment_generator())
            batch = _batch_to_device(batch, self.device)
            lr = opt.lr * lr_factor(self.step, opt)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss, metrics = self._forward(batch)  # scalar, dict
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.train.check_finite:
                self._check_finite_step(loss, metrics)
            if opt.grad_clip > 0:
                metrics["grad_norm"] = nn.utils.clip_grad_norm_(self.policy.parameters(), opt.grad_clip).detach()
            self.optimizer.step()
            self.step += 1
            # samples are steps; a batch of whole episodes (memory) holds seq_mask.sum() of them (this rank's x world)
            local = int(batch["seq_mask"].sum()) if batch.get("seq_mask") is not None else len(idx)
            samples += local * self.dist.world_size
            window_samples += local * self.dist.world_size
            last = metrics
            if bar is not None:
                bar.update(1)
            if self.step % self.cfg.train.log_every == 0 or self.step == end:
                now = time.perf_counter()
                sps = window_samples / max(now - window_t, 1e-9)
                window_t, window_samples = now, 0
                logged = scalars(metrics)  # the only host sync of the metrics: once per log_every steps
                self._log({"step": self.step, "split": "train", "lr": lr, "samples_per_s": sps, **logged})
                if bar is not None:
                    bar.set_postfix(loss=f"{logged['loss']:.4f}", sps=f"{sps:,.0f}")
            if self.step % self.cfg.train.eval_every == 0 or self.step == total_steps:
                val = self.validate()
                if val:
                    self._log({"step": self.step, "split": "val", **val})
                    stopped_early = self._early_stopping(val["loss"])
            if self.step % self.cfg.train.checkpoint_every == 0 or self.step == end or stopped_early:
                self.save()
            if stopped_early:
                break
        if bar is not None:
            bar.close()
        wall = time.perf_counter() - t0
        summary = {"phase": self.phase, "step": self.step, "steps": total_steps, "wall_s": wall,
                   "samples_per_s": samples / max(wall, 1e-9), "stopped_early": stopped_early,
                   "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
                   "last": scalars(last), "parameters": count_parameters(self.policy),
                   "train_samples": getattr(self.train_ds, "num_steps", len(self.train_ds)),
                   "train_episodes": self.train_ds.num_episodes, "world_size": self.dist.world_size,
                   "resumed_from_step": self.resumed_from_step}
        if self.dist.is_main:
            write_json_atomic(self.run_dir / "summary.json", summary)
        if self._writer:
            self._writer.close()
        return summary

    def _early_stopping(self, val_loss: float) -> bool:
        improved = val_loss < self.best_val - 1e-6
        if improved:
            self.best_val = val_loss
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        patience = self.cfg.train.early_stopping_patience
        stop = patience > 0 and self.evals_without_improvement >= patience
        return broadcast_flag(stop, self.dist)


def __getattr__(name: str) -> Any:
    """The cycle functions, re-exported lazily: :mod:`vlafoundry.train.cycles` imports :class:`Trainer` from here."""
    if name in _CYCLES:
        from vlafoundry.train import cycles

        return getattr(cycles, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Trainer", "run_phase", "fit_phase", "cycle_configs", "cycle_dirs", "phase_finished",  # noqa: F822 (lazy)
           "policy_from_checkpoint", "lr_factor", "build_optimizer", "NonFiniteError", "ensure_dataset",
           "load_datasets"]
