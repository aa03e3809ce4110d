"""Baselines that the VLA policy is compared against.

:class:`TaskOneHotMLP` is the classic multi-task Meta-World baseline: a plain MLP on the normalised 39-D state
concatenated with a one-hot of the task, regressing the expert's continuous action with an L1 loss (as the
``metaworld-mt10`` preset trains the language policy). It never reads the instruction: at training time the task
comes from the batch's ``task_id`` (an index into the dataset's task list), when acting from the observation
batch's ``task`` names, which the closed-loop evaluator fills from the environment (``obs["task"]``, e.g.
``"metaworld/push"``). It implements the policy contract (:class:`~vlafoundry.models.base.Policy`, registered as
``model.type: onehot_mlp``), so it trains with the one :class:`~vlafoundry.train.trainer.Trainer` and is scored by
the same evaluation code, seeds and episode counts as the VLA policy.

Data flow (B samples)::

    state (B,[T,]S) ──last frame, standardised by the processor──┐
    task_id (B,) ──one-hot over spec.tasks──────────┴─► concat (B, S + n_tasks) ─► [Linear, act] x layers
                                                      ─► ActionDecoder (tanh-bounded to [low, high]) ─► (B, A)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlafoundry.config import require
from vlafoundry.models.base import Policy
from vlafoundry.models.config import ModelConfig
from vlafoundry.models.processor import PolicyProcessor
from vlafoundry.models.registry import register_policy
from vlafoundry.models.spec import PolicySpec
from vlafoundry.nn._checks import check_tensor
from vlafoundry.nn.action import ActionDecoder
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


@dataclass
class OneHotMLPConfig(ModelConfig):
    """Architecture of :class:`TaskOneHotMLP` (``model.type: onehot_mlp``).

    Attributes:
        hidden: width of every hidden layer.
        layers: number of hidden ``Linear + activation`` layers before the bounded action head (>= 1).
        activation: ``relu``, ``gelu`` or ``tanh``.
        dropout: dropout after every hidden layer (training only).
        loss: ``l1`` (as the language policy's ``loss.continuous``) or ``mse``.
    """

    type: str = "onehot_mlp"
    hidden: int = 256
    layers: int = 3
    activation: str = "relu"
    dropout: float = 0.0
    loss: str = "l1"

    def __post_init__(self) -> None:
        require(self.type == "onehot_mlp", "model.type", "'onehot_mlp' for OneHotMLPConfig", self.type)
        require(self.hidden >= 1, "model.hidden", "an integer >= 1", self.hidden)
        require(self.layers >= 1, "model.layers", "an integer >= 1", self.layers)
        require(self.activation in _ACTIVATIONS, "model.activation", f"one of {list(_ACTIVATIONS)}",
                self.activation)
        require(0.0 <= self.dropout < 1.0, "model.dropout", "a probability in [0, 1)", self.dropout)
        require(self.loss in ("l1", "mse"), "model.loss", "one of ['l1', 'mse']", self.loss)


@register_policy("onehot_mlp")
class TaskOneHotMLP(Policy):
    """MLP on ``[normalised state, task one-hot]`` -> bounded continuous action (a multi-task BC baseline).

    ``forward(batch) -> (loss, metrics)`` on :class:`~vlafoundry.data.DemoDataset` batches (``state`` (B, T, S) or
    (B, S), ``task_id`` (B,), ``action`` (B, K, A) or (B, A), optional ``action_mask``; only the newest frame and
    the first action of a chunk are used). ``select_action(observation) -> (N, A) float32`` on the evaluator's
    batched observations (``state`` (N, S) and ``task`` list of N task names from ``spec.tasks``; a row whose
    task is ``""``, an idle evaluation slot, gets an all-zero one-hot). ``reset()`` is a no-op: the policy keeps
    no per-row state (``stateless = True``).
    """

    config_class = OneHotMLPConfig

    def __init__(self, cfg: OneHotMLPConfig, spec: PolicySpec) -> None:
        if spec.action_type != "continuous":
            raise ValueError(f"spec.action_type: TaskOneHotMLP needs a continuous action space, got "
                             f"{spec.action_type!r}")
        if spec.state_dim < 1:
            raise ValueError(f"spec.state_dim: TaskOneHotMLP needs a state vector, got state_dim={spec.state_dim}")
        if not spec.tasks:
            raise ValueError("spec.tasks: expected the dataset's task names (one one-hot slot each), got []")
        if len(set(spec.tasks)) != len(spec.tasks):
            raise ValueError(f"spec.tasks: expected distinct task names, got {spec.tasks}")
        super().__init__(cfg, PolicyProcessor(spec, state=True))
        self.task_index = {t: i for i, t in enumerate(spec.tasks)}
        s, n, a = spec.state_dim, len(spec.tasks), spec.action_dim
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
    def from_dataset(cls, cfg: OneHotMLPConfig, dataset: Any, loss_cfg: Any = None) -> TaskOneHotMLP:
        """For a :class:`~vlafoundry.data.DemoDataset`: its action space, state statistics and task list."""
        return cls(cfg, PolicySpec.from_dataset(dataset))

    @classmethod
    def from_state(cls, cfg: OneHotMLPConfig, spec: PolicySpec, tokenizer: Any, state: dict[str, Any]) -> TaskOneHotMLP:
        return cls(cfg, spec)

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
        x = torch.cat([self.processor.normalize_state(state), self.one_hot(task_ids)], dim=1)
        return self.action_head(self.trunk(x))

    # ------------------------------------------------------------------ the policy contract
    def forward(self, batch: dict[str, Any], loss_cfg: Any = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
        kind = self.cfg.loss  # this policy's own config names its loss (model.loss)
        err = (pred - act).abs() if kind == "l1" else (pred - act) ** 2
        loss = (err.mean(-1) * w).sum() / w.sum().clamp_min(1)
        l1 = ((pred - act).abs().mean(-1) * w).sum() / w.sum().clamp_min(1)
        return loss, {"bc": loss.detach(), "action_l1": l1.detach(), "loss": loss.detach()}

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


__all__ = ["OneHotMLPConfig", "TaskOneHotMLP"]
