"""The acting state of a VLA policy: what ``select_action`` remembers between steps, per env.

* a window of the last ``history`` frames (with ``anchor_first``, slot 0 keeps the episode's first frame);
* a queue of the actions left from each env's last predicted chunk (receding horizon: only the first
  ``model.execute`` actions of a chunk are queued, then the policy re-plans);
* with ``model.ensemble`` (ACT's temporal ensembling), each env's recent chunks with the step they were predicted at:
  the action is the mean of every chunk's prediction for the current step, weighted ``exp(-decay * i)`` (i = 0 the
  oldest); a new chunk every ``model.execute`` steps (every step when 0);
* with a memory, each env's GRU hidden state;
* the generator that sampled actions draw from (re-seeded by a full ``reset()``, so a rollout is reproducible).

``reset(env_indices)`` forgets some envs (an episode ended) or all of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vlafoundry.models.processor import MODALITIES, present_flags


def temporal_ensemble(preds: np.ndarray, decay: float) -> np.ndarray:
    """ACT's temporal ensembling: (M, A) predictions for one step, oldest first -> (A,) their mean weighted
    ``exp(-decay * i)``."""
    w = np.exp(-decay * np.arange(len(preds), dtype=np.float64))  # (M,)
    return (np.tensordot(w, np.asarray(preds, dtype=np.float64), axes=1) / w.sum()).astype(np.float32)


class ActingState:
    """Acting state of one policy (held, not owned: ``policy.acting``)."""

    def __init__(self, policy: Any) -> None:
        self._policy = policy
        self._check_ensemble()
        self.generator = torch.Generator().manual_seed(0)
        self.history: dict[str, torch.Tensor] | None = None  # key -> (N, T, ...)
        self.valid: torch.Tensor | None = None  # (N, T) bool
        self.queue: list[list[Any]] = []
        self.plans: list[list[tuple[int, np.ndarray]]] = []  # per env: (step predicted at, chunk (K, A))
        self.steps: list[int] = []  # per env: steps acted in this episode
        self.memory_h: torch.Tensor | None = None  # (N, D)

    # chunk execution settings, read from the policy config when acting (so they can be changed on a loaded policy)
    @property
    def execute(self) -> int:
        """Actions acted on per predicted chunk (``model.execute``; 0 there means the whole chunk)."""
        return int(self._policy.cfg.execute) or int(self._policy.cfg.chunk)

    @property
    def ensemble(self) -> bool:
        return bool(self._policy.cfg.ensemble)

    def _check_ensemble(self) -> None:
        p = self._policy
        if self.ensemble and p.action_head.action_type != "continuous":
            raise ValueError(f"model.ensemble: temporal ensembling averages continuous actions; the head "
                             f"{p.head_kind!r} acts in a {p.action_head.action_type} space")

    @property
    def replan_every(self) -> int:
        """With ensembling: steps between predictions (``model.execute``, 0 meaning every step)."""
        return int(self._policy.cfg.execute) or 1

    def reset(self, env_indices: Any = None) -> None:
        if env_indices is None or self.history is None:
            self.history, self.valid, self.memory_h = None, None, None
            self.queue, self.plans, self.steps = [], [], []
            self.generator.manual_seed(0)
            return
        for i in np.asarray(env_indices, dtype=np.int64).reshape(-1):
            self.valid[i] = False
            self.queue[i], self.plans[i], self.steps[i] = [], [], 0
            if self.memory_h is not None:
                self.memory_h[i] = 0.0

    def _start(self, frames: dict[str, torch.Tensor], n: int, t: int) -> None:
        self.history = {k: v.unsqueeze(1).repeat(1, t, *([1] * (v.dim() - 1))) for k, v in frames.items()}
        self.valid = torch.zeros(n, t, dtype=torch.bool)
        self.queue = [[] for _ in range(n)]
        self.plans = [[] for _ in range(n)]
        self.steps = [0] * n
        self.memory_h = None

    @torch.no_grad()
    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        """Batched acting: keeps the last ``history`` frames per env and a queue of chunked actions."""
        p = self._policy
        n = p.processor.check_observation(observation)
        instr = list(observation["instruction"])
        t = p.cfg.history
        frames = {}
        if p.has_image:
            frames["image"] = torch.as_tensor(np.asarray(observation["image"]))
        if p.has_state:
            frames["state"] = torch.as_tensor(np.asarray(observation["state"], dtype=np.float32))
        if self.history is None or len(self.queue) != n:
            self._start(frames, n, t)
        if p.memory is not None:  # history 1, chunk 1: one memory step for every env
            return self._act_with_memory(observation, frames, instr, n)
        first = ~self.valid.any(dim=1)  # (N,) envs on the first step of an episode
        lo = 1 if p.cfg.anchor_first else 0  # with anchor_first, slot 0 keeps the episode's first frame
        for k, v in frames.items():  # shift the window left, append the newest frame
            h = self.history[k]
            h[:, lo:-1] = h[:, lo + 1:].clone()
            h[:, -1] = v
            if lo:
                h[first, 0] = v[first]
        self.valid[:, lo:-1] = self.valid[:, lo + 1:].clone()
        self.valid[:, -1] = True
        if lo:
            self.valid[first, 0] = True
        if self.ensemble:
            self._check_ensemble()
            need = [i for i in range(n) if self.steps[i] % self.replan_every == 0 or not self._covered(i)]
        else:
            need = [i for i in range(n) if not self.queue[i]]
        if need:
            idx = torch.as_tensor(need)
            batch: dict[str, Any] = {k: v[idx] for k, v in self.history.items()}
            batch["obs_mask"] = self.valid[idx]
            batch["instruction"] = [instr[i] for i in need]
            for m in MODALITIES:
                if f"{m}_present" in observation:
                    batch[f"{m}_present"] = np.asarray(observation[f"{m}_present"])[need]
            chunk = p.predict_chunk(batch).cpu().numpy()  # (len(need), K[, A])
            for j, i in enumerate(need):
                if self.ensemble:
                    self.plans[i].append((self.steps[i], chunk[j]))
                else:
                    self.queue[i] = list(chunk[j][:self.execute])
        if self.ensemble:
            actions = [self._ensembled(i) for i in range(n)]
        else:
            actions = [self.queue[i].pop(0) for i in range(n)]
        for i in range(n):
            self.steps[i] += 1
        return np.stack(actions).astype(np.int64 if p.head_kind == "discrete" else np.float32)

    def _covered(self, i: int) -> bool:
        """Whether some kept chunk of env ``i`` predicts its current step."""
        return any(s + len(c) > self.steps[i] for s, c in self.plans[i])

    def _ensembled(self, i: int) -> np.ndarray:
        """Env ``i``'s action now: the temporal ensemble of its chunks that cover this step (older ones dropped)."""
        t = self.steps[i]
        self.plans[i] = [(s, c) for s, c in self.plans[i] if s + len(c) > t]
        return temporal_ensemble(np.stack([c[t - s] for s, c in self.plans[i]]), float(self._policy.cfg.ensemble_decay))

    def _act_with_memory(self, observation: dict[str, Any], frames: dict[str, torch.Tensor], instr: list[str],
                         n: int) -> np.ndarray:
        """One step of every env: fuse the current frame, advance each env's memory state, act."""
        p = self._policy
        batch: dict[str, Any] = {k: v.unsqueeze(1) for k, v in frames.items()}  # (N, 1, ...)
        batch["instruction"] = instr
        batch.update(present_flags(observation))
        b = p.prepare(batch)
        if self.memory_h is None:
            self.memory_h = torch.zeros(n, p.cfg.d_model, device=p.device)
        fused, self.memory_h = p.remember(p.fuse(p.encode(b)), None, self.memory_h)  # (N, D), (N, D)
        actions = p.pick(p.action_outputs(fused))[:, 0]  # (N,) | (N, A): chunk is 1 with a memory
        return actions.cpu().numpy().astype(np.int64 if p.head_kind == "discrete" else np.float32)


__all__ = ["ActingState", "temporal_ensemble"]
