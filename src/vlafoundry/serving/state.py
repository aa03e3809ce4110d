"""Per-client acting state on a shared policy, and batched acting across clients that keeps it correct.

A server holds ONE policy; each client connection is a :class:`Session` with its own rows and episode state. How a
group of pending requests is run depends on the policy (:class:`Actor` picks the mode once):

* ``rows`` -- the policy keeps its acting state in a :class:`~vlafoundry.models.acting.ActingState`
  (``VLAPolicy``: history window, chunk queues, GRU memory). Every session owns an ``ActingState``; requests of
  sessions with the same observation layout are stacked into ONE ``select_action`` call on a merged state (history,
  validity, queues and memory rows concatenated) and the state is split back afterwards, so memory and history stay
  per row. A session on the first step after a full reset, or alone in its group, runs alone on its own state (its
  own sampling generator: a lone client gets exactly the actions an in-process policy would). Merged groups sample
  from one shared generator (results then depend on who was batched together, not on correctness).
* ``stateless`` -- a policy whose ``stateless`` is true and that has no ``ActingState``: observations are stacked,
  nothing per client is kept.
* ``copy`` -- any other stateful policy type: each session gets its own deep copy of the policy and is run alone
  (correct for any acting state, no batching across clients).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlafoundry.models.acting import ActingState


@dataclass
class Session:
    """One client's acting state (``acting`` in ``rows`` mode, ``policy`` copy in ``copy`` mode)."""

    acting: ActingState | None = None
    policy: Any = None
    rows: int | None = None  # rows of the last act (for reset row checks)
    served: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _signature(obs: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, None if isinstance(v, list) else (v.shape[1:], v.dtype.str)) for k, v in obs.items()))


def _stack(observations: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in observations[0].items():
        if isinstance(v, list):
            out[k] = [x for o in observations for x in o[k]]
        else:
            out[k] = np.concatenate([o[k] for o in observations])
    return out


class Actor:
    """Runs ``select_action`` for groups of (session, observation) pairs on one policy (see the module docstring)."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        own = getattr(policy, "acting", None)
        if isinstance(own, ActingState):
            self.mode = "rows"
        elif bool(getattr(policy, "stateless", False)):
            self.mode = "stateless"
        else:
            self.mode = "copy"
        self._own = own
        self._shared_generator = torch.Generator().manual_seed(0)

    def new_session(self) -> Session:
        if self.mode == "rows":
            return Session(acting=type(self._own)(self.policy))
        if self.mode == "copy":
            return Session(policy=copy.deepcopy(self.policy))
        return Session()

    def reset(self, session: Session, rows: list[int] | None) -> None:
        if self.mode == "rows":
            session.acting.reset(rows)
        elif self.mode == "copy":
            session.policy.reset(rows)

    # ------------------------------------------------------------------ acting
    def act(self, items: list[tuple[Session, dict[str, Any]]]) -> list[np.ndarray | Exception]:
        """One result per item, in order: the actions (N_i, ...) or the exception its request raised."""
        results: list[np.ndarray | Exception | None] = [None] * len(items)
        if self.mode == "copy":
            for i, (s, obs) in enumerate(items):
                results[i] = self._guard(lambda s=s, obs=obs: s.policy.select_action(obs))
            return results  # type: ignore[return-value]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (s, obs) in enumerate(items):
            n = len(obs["instruction"])
            if self.mode == "rows" and (s.acting.history is None or len(s.acting.queue) != n):
                results[i] = self._alone(s, obs)  # first step of an episode batch: builds its state
                continue
            groups.setdefault(_signature(obs), []).append(i)
        for idx in groups.values():
            if len(idx) == 1:
                results[idx[0]] = self._alone(*items[idx[0]])
                continue
            try:
                outs = self._merged([items[i] for i in idx])
            except Exception:  # noqa: BLE001 - one bad request must not fail the others: run each alone
                outs = [self._alone(*items[i]) for i in idx]
            for i, o in zip(idx, outs, strict=True):
                results[i] = o
        for (s, obs), r in zip(items, results, strict=True):
            if not isinstance(r, Exception):
                s.rows, s.served = len(obs["instruction"]), s.served + len(obs["instruction"])
        return results  # type: ignore[return-value]

    @staticmethod
    def _guard(fn: Any) -> np.ndarray | Exception:
        try:
            return np.asarray(fn())
        except Exception as exc:  # noqa: BLE001 - reported to the client that sent it
            return exc

    def _alone(self, s: Session, obs: dict[str, Any]) -> np.ndarray | Exception:
        if self.mode != "rows":
            return self._guard(lambda: self.policy.select_action(obs))
        self.policy.acting = s.acting
        try:
            return self._guard(lambda: self.policy.select_action(obs))
        finally:
            self.policy.acting = self._own

    def _merged(self, items: list[tuple[Session, dict[str, Any]]]) -> list[np.ndarray]:
        if self.mode == "stateless":
            return self._split(np.asarray(self.policy.select_action(_stack([o for _, o in items]))), items)
        states = [s.acting for s, _ in items]
        if len({st.memory_h is None for st in states}) != 1 or len({tuple(st.history) for st in states}) != 1:
            raise ValueError("sessions in different acting phases")
        m = type(self._own)(self.policy)
        m.generator = self._shared_generator
        m.history = {k: torch.cat([st.history[k] for st in states]) for k in states[0].history}
        m.valid = torch.cat([st.valid for st in states])
        m.queue = [list(q) for st in states for q in st.queue]
        m.plans = [list(pl) for st in states for pl in st.plans]  # overlapping chunks (temporal ensembling)
        m.steps = [n for st in states for n in st.steps]
        m.memory_h = None if states[0].memory_h is None else torch.cat([st.memory_h for st in states])
        self.policy.acting = m
        try:
            actions = np.asarray(self.policy.select_action(_stack([o for _, o in items])))
        finally:
            self.policy.acting = self._own
        a = 0
        for st in states:  # split the merged state back (views: each session touches only its own rows)
            b = a + len(st.queue)
            st.history = {k: v[a:b] for k, v in m.history.items()}
            st.valid = m.valid[a:b]
            st.queue = m.queue[a:b]
            st.plans, st.steps = m.plans[a:b], m.steps[a:b]
            st.memory_h = None if m.memory_h is None else m.memory_h[a:b]
            a = b
        return self._split(actions, items)

    @staticmethod
    def _split(actions: np.ndarray, items: list[tuple[Session, dict[str, Any]]]) -> list[np.ndarray]:
        out, a = [], 0
        for _, obs in items:
            b = a + len(obs["instruction"])
            out.append(actions[a:b])
            a = b
        if a != len(actions):
            raise ValueError(f"policy.select_action: expected {a} actions for the stacked batch, got {len(actions)}")
        return out


__all__ = ["Actor", "Session"]
