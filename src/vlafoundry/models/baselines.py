"""Baselines that the VLA policy is compared against.

:class:`TaskOneHotMLP` is the classic multi-task Meta-World baseline: a plain MLP on the normalised 39-D state
concatenated with a one-hot of the task, regressing the expert's continuous action with an L1 loss (as the
``metaworld-mt10`` preset trains the language policy). It never reads the instruction: at training time the task
comes from the batch's ``task_id`` (an index into the dataset's task list), when acting from the observation
batch's ``task`` names, which the closed-loop evaluator fills from the environment (``obs["task"]``, e.g.
``"metaworld/push"``). It follows the acting contract of :class:`~vlafoundry.models.VLAPolicy` that
:func:`vlafoundry.eval.rollout.evaluate_policy` relies on -- ``select_action(batch) -> (N, A)`` and
``reset(env_indices=None)`` -- so the same evaluation code, seeds and episode counts score both.

Data flow (B samples)::

    state (B,[T,]S) ──last frame, (x - mean) / std──┐
    task_id (B,) ──one-hot over spec.tasks──────────┴─► concat (B, S + n_tasks) ─► [Linear, act] x layers
                                                      ─► ActionDecoder (tanh-bounded to [low, high]) ─► (B, A)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlafoundry.config import require
from vlafoundry.models.policy import PolicySpec
from vlafoundry.nn._checks import check_tensor
from vlafoundry.nn.action import ActionDecoder

_STD_FLOOR = 1e-6
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass
class OneHotMLPConfig:
    """Architecture of :class:`TaskOneHotMLP`.

    Attributes:
        hidden: width of every hidden layer.
        layers: number of hidden ``Linear + activation`` layers before the bounded action head (>= 1).
        activation: ``relu``, ``gelu`` or ``tanh``.
        dropout: dropout after every hidden layer (training only).
        loss: ``l1`` (as the language policy's ``loss.continuous``) or ``mse``.
    """

    hidden: int = 256
    layers: int = 3
    activation: str = "relu"
    dropout: float = 0.0
    loss: str = "l1"

    def __post_init__(self) -> None:
        require(self.hidden >= 1, "baseline.hidden", "an integer >= 1", self.hidden)
        require(self.layers >= 1, "baseline.layers", "an integer >= 1", self.layers)
        require(self.activation in _ACTIVATIONS, "baseline.activation", f"one of {list(_ACTIVATIONS)}",
                self.activation)
        require(0.0 <= self.dropout < 1.0, "baseline.dropout", "a probability in [0, 1)", self.dropout)
        require(self.loss in ("l1", "mse"), "baseline.loss", "one of ['l1', 'mse']", self.loss)


class TaskOneHotMLP(nn.Module):
    """MLP on ``[normalised state, task one-hot]`` -> bounded continuous action (a multi-task BC baseline).

    ``forward(batch) -> (loss, metrics)`` on :class:`~vlafoundry.data.DemoDataset` batches (``state`` (B, T, S) or
    (B, S), ``task_id`` (B,), ``action`` (B, K, A) or (B, A), optional ``action_mask``; only the newest frame and
    the first action of a chunk are used). ``select_action(observation) -> (N, A) float32`` on the evaluator's
    batched observations (``state`` (N, S) and ``task`` list of N task names from ``spec.tasks``; a row whose
    task is ``""``, an idle evaluation slot, gets an all-zero one-hot). ``reset()`` is a no-op: the policy keeps
    no per-row state (``stateless = True``).
    """

    stateless = True

    def __init__(self, cfg: OneHotMLPConfig, spec: PolicySpec) -> None:
        super().__init__()
        if spec.action_type != "continuous":
            raise ValueError(f"spec.action_type: TaskOneHotMLP needs a continuous action space, got "
                             f"{spec.action_type!r}")
        if spec.state_dim < 1:
            raise ValueError(f"spec.state_dim: TaskOneHotMLP needs a state vector, got state_dim={spec.state_dim}")
        if not spec.tasks:
            raise ValueError("spec.tasks: expected the dataset's task names (one one-hot slot each), got []")
        if len(set(spec.tasks)) != len(spec.tasks):
            raise ValueError(f"spec.tasks: expected distinct task names, got {spec.tasks}")
        self.cfg, self.spec = cfg, spec
        self.task_index = {t: i for i, t in enumerate(spec.tasks)}
        s, n, a = spec.state_dim, len(spec.tasks), spec.action_dim
        mean = torch.tensor(spec.state_mean or [0.0] * s, dtype=torch.float32)
        std = torch.tensor(spec.state_std or [1.0] * s, dtype=torch.float32)
        if mean.shape != (s,) or std.shape != (s,):
            raise ValueError(f"spec.state_mean/state_std: expected {s} values each, got {tuple(mean.shape)} and "
                             f"{tuple(std.shape)}")
        # constant dimensions (std ~ 0, e.g. Meta-World's unused object slots) are centred, not blown up
        self.register_buffer("state_mean", mean)
        self.register_buffer("state_std", torch.where(std < _STD_FLOOR, torch.ones_like(std), std))
        act = _ACTIVATIONS[cfg.activation]
        layers: list[nn.Module] = []
        width = s + n
        for _ in range(cfg.layers):
            layers += [nn.Linear(width, cfg.hidden), act()]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = cfg.hidden
        self.trunk = nn.Sequential(*layers)
        low = spec.action_low or [-1.0] * a
        high = spec.action_high or [1.0] * a
        self.action_head = ActionDecoder(cfg.hidden, a, hidden_dim=cfg.hidden, low=low, high=high)

    # ------------------------------------------------------------------ construction / persistence
    @classmethod
    def from_dataset(cls, cfg: OneHotMLPConfig, ds: Any) -> TaskOneHotMLP:
        """For a :class:`~vlafoundry.data.DemoDataset`: its action space, state statistics and task list."""
        return cls(cfg, PolicySpec.from_dataset(ds))

    def extra_state(self) -> dict[str, Any]:
        """JSON-able config and spec; ``TaskOneHotMLP(OneHotMLPConfig(**x["config"]), PolicySpec(**x["spec"]))``."""
        return {"config": asdict(self.cfg), "spec": asdict(self.spec)}

    @property
    def device(self) -> torch.device:
        return self.state_mean.device

    # ------------------------------------------------------------------ the network
    def one_hot(self, task_ids: torch.Tensor) -> torch.Tensor:
        """(B,) int task indices (-1 = no task) -> (B, n_tasks) float one-hot (all zeros for -1)."""
        n = len(self.spec.tasks)
        ids = task_ids.long().reshape(-1).to(self.device)
        if ids.numel() and (int(ids.min()) < -1 or int(ids.max()) >= n):
            raise ValueError(f"task_id: expected indices in [0, {n}) (or -1 for none), got values in "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return F.one_hot(ids.clamp_min(0), n).float() * (ids >= 0).unsqueeze(1).float()

    def predict(self, state: torch.Tensor, task_ids: torch.Tensor) -> torch.Tensor:
        """Raw state (B, S) or (B, T, S) (newest frame last) and task indices (B,) -> actions (B, A)."""
        state = torch.as_tensor(state, dtype=torch.float32, device=self.device)
        if state.dim() == 3:
            state = state[:, -1]
        check_tensor("state", state, ndim=2, last_dim=self.spec.state_dim, finite=True)
        if task_ids.reshape(-1).shape[0] != state.shape[0]:
            raise ValueError(f"task_id: expected {state.shape[0]} rows (one per state), got "
                             f"{tuple(task_ids.shape)}")
        x = torch.cat([(state - self.state_mean) / self.state_std, self.one_hot(task_ids)], dim=1)
        return self.action_head(self.trunk(x))

    # ------------------------------------------------------------------ the policy contract
    def forward(self, batch: dict[str, Any], loss_cfg: Any = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Behaviour-cloning loss on the first action of each sample's chunk (masked by ``action_mask``)."""
        if "task_id" not in batch:
            raise ValueError("batch: expected key 'task_id' (index into spec.tasks), as DemoDataset batches have")
        pred = self.predict(torch.as_tensor(batch["state"]), torch.as_tensor(batch["task_id"]))  # (B, A)
        act = torch.as_tensor(batch["action"], dtype=torch.float32, device=self.device)
        if act.dim() == 3:
            act = act[:, 0]
        check_tensor("action", act, ndim=2, last_dim=self.spec.action_dim)
        mask = batch.get("action_mask")
        w = torch.ones(act.shape[0], device=self.device)
        if mask is not None:
            mask = torch.as_tensor(mask, device=self.device)
            w = (mask[:, 0] if mask.dim() == 2 else mask).float()
        kind = getattr(loss_cfg, "continuous", None) or self.cfg.loss
        err = (pred - act).abs() if kind == "l1" else (pred - act) ** 2
        loss = (err.mean(-1) * w).sum() / w.sum().clamp_min(1)
        l1 = ((pred - act).abs().mean(-1) * w).sum() / w.sum().clamp_min(1)
        return loss, {"bc": float(loss.detach()), "action_l1": float(l1.detach()), "loss": float(loss.detach())}

    def task_ids(self, tasks: Sequence[str]) -> torch.Tensor:
        """Task names -> indices into ``spec.tasks`` (``""`` -> -1); an unknown name raises ValueError."""
        out = []
        for t in tasks:
            if t == "":
                out.append(-1)
                continue
            i = self.task_index.get(str(t))
            if i is None:
                raise ValueError(f"task: {t!r} is not one of the tasks this policy was trained on {self.spec.tasks}")
            out.append(i)
        return torch.tensor(out, dtype=torch.long)

    @torch.no_grad()
    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        """Batched acting: ``observation["state"]`` (N, S) and ``observation["task"]`` (N task names) -> (N, A)."""
        tasks = observation.get("task")
        if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"task: expected a list of N task names (the evaluator's batch['task']), got "
                             f"{type(tasks).__name__} {tasks!r:.60}")
        state = np.asarray(observation.get("state"), dtype=np.float32)
        if state.ndim != 2 or state.shape[0] != len(tasks):
            raise ValueError(f"state: expected shape ({len(tasks)}, {self.spec.state_dim}), got {state.shape}")
        return self.predict(torch.from_numpy(state), self.task_ids(tasks)).cpu().numpy().astype(np.float32)

    def reset(self, env_indices: Any = None) -> None:
        """Nothing to forget: actions depend only on the current observation."""


# ---------------------------------------------------------------------------------------------- training
def fit_baseline(
    model: nn.Module,
    ds: Any,
    *,
    max_steps: int = 20_000,
    max_seconds: float | None = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    min_lr_ratio: float = 0.05,
    warmup_steps: int = 100,
    weight_decay: float = 0.0,
    grad_clip: float = 1.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Train ``model`` (``forward(batch) -> (loss, metrics)``) on random batches of ``ds`` under a step and time budget.

    AdamW; the learning rate warms up linearly for ``warmup_steps`` and then follows a cosine to
    ``lr * min_lr_ratio`` over *progress* = the larger of ``step / max_steps`` and ``elapsed / max_seconds``, so it
    anneals fully whichever budget runs out first. Batches are drawn uniformly with replacement from ``ds`` with a
    generator seeded by ``seed`` (``ds.__getitems__`` when present). Returns ``steps``, ``seconds``,
    ``samples``, ``first_loss``, ``final_loss`` (mean of the last 50 steps) and ``stopped_by``
    (``"steps"`` or ``"time"``).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps: expected >= 1, got {max_steps}")
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds: expected > 0 (or None for no time limit), got {max_seconds}")
    if len(ds) == 0:
        raise ValueError("ds: expected a dataset with at least one sample, got an empty one")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    get = getattr(ds, "__getitems__", None)
    model.train()
    losses: list[float] = []
    step, stopped_by = 0, "steps"
    t0 = time.perf_counter()
    while step < max_steps:
        elapsed = time.perf_counter() - t0
        if max_seconds is not None and elapsed >= max_seconds:
            stopped_by = "time"
            break
        progress = max(step / max_steps, elapsed / max_seconds if max_seconds else 0.0)
        if step < warmup_steps:
            factor = (step + 1) / warmup_steps
        else:
            factor = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        for g in opt.param_groups:
            g["lr"] = lr * factor
        idx = rng.integers(0, len(ds), size=batch_size)
        batch = get(idx.tolist()) if get is not None else _collate_items(ds, idx)
        loss, _ = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
    model.eval()
    tail = losses[-50:]
    return {
        "steps": step,
        "seconds": round(time.perf_counter() - t0, 2),
        "samples": step * batch_size,
        "batch_size": batch_size,
        "first_loss": losses[0] if losses else float("nan"),
        "final_loss": float(np.mean(tail)) if tail else float("nan"),
        "stopped_by": stopped_by,
    }


def _collate_items(ds: Any, idx: np.ndarray) -> dict[str, Any]:
    from vlafoundry.data.collate import collate

    return collate([ds[int(i)] for i in idx])


__all__ = ["OneHotMLPConfig", "TaskOneHotMLP", "fit_baseline"]
