"""Vectorised closed-loop evaluation: many environments, a few worker processes, one policy call per step.

Layout: ``num_envs`` environment *slots* are split into contiguous chunks, one chunk per worker process
(``workers=0`` steps them in the calling process). Every step the main process

1. stacks the latest observation of every slot into one batch (row ``i`` is always slot ``i``; besides the
   observation arrays, ``batch["task"]`` lists each row's task name, e.g. ``"metaworld/push"``, for policies
   conditioned on a task id instead of the instruction),
2. calls ``policy.select_action(batch)`` once,
3. sends each worker one message holding its slice of the actions and, for every running slot, the episode it
   should start if the current one ends in this step, and receives one message back with the new observations
   (NumPy arrays), which slots started a new episode, and the records of episodes that ended.

Slots whose episode ended call ``policy.reset([slot, ...])`` before the next ``select_action``. Episodes are handed
out in index order to the slots that free up first (slot order breaks ties), so with a fixed seed and a policy that
is deterministic for a fixed seed the whole evaluation is reproducible. Idle slots (no episodes left) keep their
last observation in the batch and their actions are ignored; a batch therefore always has ``num_envs`` rows, which
keeps row-indexed policy state (history, action chunks) aligned with slots. The exception is a *row-stateless*
policy (:func:`row_stateless`: no history, no action chunks): in the final wave, when no episodes are left to start,
it is called on the running rows only, so the tail of an evaluation does not pay for idle rows.

Episode ``i`` of a task uses seed ``seed_start + i``; ``seed_start`` defaults to ``10**9`` as in BabyAI's protocol
and is checked against the training seeds (:func:`resolve_seed_start`). Observation corruption
(:class:`ObservationCorruption`) and instruction paraphrasing happen in the workers with a per-episode random
generator seeded from the episode seed, so they too are reproducible and independent of ``workers``/``num_envs``.
(:class:`ObservationCorruption` lives in :mod:`vlafoundry.eval.corruption` and is importable from here as before.)
Episodes store their action sequence, so GIFs are made afterwards by replaying chosen episodes
(:func:`replay_frames`) instead of rendering every step of every episode.
The env-side slots and worker processes are :mod:`vlafoundry.eval.rollout_workers`; the summary rows and
:class:`EvalResult` are :mod:`vlafoundry.eval.rollout_results` (both importable from here as before).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from vlafoundry.envs.spec import EVAL_SEED_BASE
from vlafoundry.eval.corruption import MODALITIES, NOISE_WORDS, ObservationCorruption  # noqa: F401 (re-exported)
from vlafoundry.eval.paraphrase import ParaphraseMap
from vlafoundry.eval.rollout_results import (  # noqa: F401 (re-exported)
    EvalResult,
    build_result,
    select_gif_episodes,
    summarize_episodes,
)
from vlafoundry.eval.rollout_workers import (  # noqa: F401 (re-exported)
    _OBS_FIELDS,
    Job,
    _LocalGroup,
    _RemoteGroup,
    _RunOptions,
    _Slot,
    _SlotGroup,
    _worker_main,
)

DEFAULT_SEED_START = EVAL_SEED_BASE  # the one constant, in vlafoundry.envs.spec


def resolve_seed_start(
    seed_start: int,
    episodes: int,
    training_seeds: Sequence[tuple[int, int]] | None = None,
    on_overlap: str = "shift",
) -> tuple[int, str | None]:
    """Make the evaluation seeds ``[seed_start, seed_start + episodes)`` disjoint from every training range.

    Args:
        training_seeds: half-open ``(start, stop)`` seed ranges used to generate training demonstrations.
        on_overlap: ``"shift"`` moves ``seed_start`` just past the overlapping ranges (and returns a note saying
            so); ``"error"`` raises ``ValueError``.

    Returns:
        ``(seed_start, note)``; ``note`` is ``None`` when no shift was needed.
    """
    if on_overlap not in ("shift", "error"):
        raise ValueError(f"on_overlap: expected 'shift' or 'error', got {on_overlap!r}")
    if episodes < 1:
        raise ValueError(f"episodes: expected >= 1, got {episodes}")
    ranges = [(int(a), int(b)) for a, b in (training_seeds or ()) if int(b) > int(a)]
    start, original = int(seed_start), int(seed_start)
    for _ in range(len(ranges) + 1):
        hits = [(a, b) for a, b in ranges if a < start + episodes and start < b]
        if not hits:
            break
        if on_overlap == "error":
            a, b = hits[0]
            raise ValueError(
                f"seed_start: evaluation seeds [{start}, {start + episodes}) overlap training seeds [{a}, {b}); "
                f"expected a start >= {b} or a range ending <= {a}"
            )
        start = max(b for _, b in hits)
    note = None
    if start != original:
        note = (
            f"evaluation seeds [{original}, {original + episodes}) overlapped training seeds; "
            f"shifted to start at {start}"
        )
        warnings.warn(note, stacklevel=2)
    return start, note


class VectorRollout:
    """Pool of environment slots stepped by worker processes; reusable for several evaluations.

    Args:
        num_envs: number of environment slots (rows of every policy batch).
        workers: worker processes; 0 steps every env in this process. Capped at ``num_envs``.
        env_kwargs: keyword arguments for ``vlafoundry.envs.make_env`` (e.g. ``image="symbolic"``).
        start_method: multiprocessing start method ("fork" where available: workers only step envs).
        torch_threads: intra-op threads for the policy during :meth:`run` (restored afterwards). Default: leave
            as is with ``workers=0``, else ``max(1, cpu_count - workers)`` -- oversubscribed OpenMP threads
            spinning against the env workers can make a batched forward pass 10x slower.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        num_envs: int = 16,
        workers: int = 0,
        env_kwargs: Mapping[str, Any] | None = None,
        start_method: str | None = None,
        torch_threads: int | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs: expected >= 1, got {num_envs}")
        if workers < 0:
            raise ValueError(f"workers: expected >= 0, got {workers}")
        self.num_envs = int(num_envs)
        self.env_kwargs = dict(env_kwargs or {})
        workers = min(int(workers), self.num_envs)
        self.workers = workers
        if torch_threads is None and workers > 0:
            torch_threads = max(1, (os.cpu_count() or 1) - workers)
        self.torch_threads = torch_threads
        n_groups = max(workers, 1)
        sizes = [self.num_envs // n_groups + (1 if g < self.num_envs % n_groups else 0) for g in range(n_groups)]
        self.bounds = np.cumsum([0, *sizes]).tolist()
        self.groups: list[_RemoteGroup | _LocalGroup] = []
        if workers == 0:
            self.groups.append(_LocalGroup(self.num_envs, self.env_kwargs))
        else:
            method = start_method or ("fork" if "fork" in mp.get_all_start_methods() else "spawn")
            ctx = mp.get_context(method)
            self.groups = [_RemoteGroup(ctx, n, self.env_kwargs) for n in sizes]
            try:
                for g in self.groups:
                    g.recv()
            except Exception:
                self.close()
                raise

    def __enter__(self) -> VectorRollout:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for g in self.groups:
            g.close()
        self.groups = []

    def _broadcast(self, cmd: str, per_group: Callable[[int, int, int], tuple[Any, ...]]) -> list[Any]:
        for g, grp in enumerate(self.groups):
            grp.send(cmd, *per_group(g, self.bounds[g], self.bounds[g + 1]))
        return [grp.recv() for grp in self.groups]

    @staticmethod
    def _gather(replies: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
        obs: dict[str, Any] = {}
        if replies[0][0] is not None:
            obs["image"] = np.concatenate([r[0] for r in replies])
        obs["state"] = np.concatenate([r[1] for r in replies])
        obs["instruction"] = [s for r in replies for s in r[2]]
        present = np.concatenate([r[3] for r in replies])
        if "image" in obs:
            obs["image_present"] = present[:, 0].copy()
        obs["instruction_present"] = present[:, 1].copy()
        obs["state_present"] = present[:, 2].copy()
        obs["task"] = [t for r in replies for t in r[4]]
        return obs

    def run(
        self,
        policy: Any,
        jobs: Sequence[Job],
        corruption: ObservationCorruption | None = None,
        paraphrases: ParaphraseMap | None = None,
        max_steps: int | None = None,
        stop_on_success: bool = True,
        progress: str | None = None,
    ) -> list[dict[str, Any]]:
        """Run every job ``(env name, seed, index)`` to completion; returns episode records sorted by index.

        ``progress``: a label to show episodes done / total under (:func:`vlafoundry.progress.progress`); None:
        silent.
        """
        import torch

        from vlafoundry.progress import progress as progress_bar

        if not self.groups:
            raise ValueError("run: this VectorRollout is closed")
        opts = _RunOptions(corruption or ObservationCorruption(), paraphrases, max_steps, stop_on_success)
        self._broadcast("configure", lambda g, a, b: (opts,))
        pending = list(jobs)
        first = pending[: self.num_envs] + [None] * max(0, self.num_envs - len(pending))
        pending = pending[self.num_envs :]
        replies = self._broadcast("start", lambda g, a, b: (first[a:b],))
        active = np.concatenate([r[_OBS_FIELDS] for r in replies])
        obs = self._gather(replies)
        policy.reset()
        compact = row_stateless(policy)
        old_threads = torch.get_num_threads()
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        bar = progress_bar(len(jobs), progress or "", "ep", enabled=progress is not None)
        try:
            records = self._loop(policy, obs, active, pending, compact, bar.update)
        finally:
            bar.close()
            torch.set_num_threads(old_threads)
        records.sort(key=lambda r: r["index"])
        return records

    def _loop(self, policy: Any, obs: dict[str, Any], active: np.ndarray, pending: list[Job], compact: bool,
              on_finished: Callable[[int], None]) -> list[dict[str, Any]]:  # fmt: skip
        import torch

        records: list[dict[str, Any]] = []
        with torch.no_grad():
            while active.any():
                if compact and not pending and not active.all():
                    # Final wave of a row-stateless policy: act only for the running slots.
                    rows = np.flatnonzero(active)
                    live = _check_actions(policy.select_action(_take_rows(obs, rows)), len(rows))
                    actions = np.zeros((self.num_envs, *live.shape[1:]), dtype=live.dtype)
                    actions[rows] = live
                else:
                    actions = _check_actions(policy.select_action(obs), self.num_envs)
                # Candidate next episode for each running slot, in slot order; unused ones stay pending.
                run_idx = np.flatnonzero(active)
                cand: list[Job | None] = [None] * self.num_envs
                pos = np.full(self.num_envs, -1, dtype=np.int64)  # index into `pending` of each candidate
                for k, i in enumerate(run_idx[: len(pending)]):
                    cand[i], pos[i] = pending[k], k
                replies = self._broadcast("step", lambda g, a, b: (actions[a:b], cand[a:b]))
                active = np.concatenate([r[_OBS_FIELDS] for r in replies])
                started = np.concatenate([r[_OBS_FIELDS + 1] for r in replies])
                done_before = len(records)
                for r in replies:
                    records.extend(r[_OBS_FIELDS + 2])
                if len(records) > done_before:
                    on_finished(len(records) - done_before)
                if started.any():
                    new_rows = np.flatnonzero(started)
                    used = {int(pos[i]) for i in new_rows}
                    pending = [j for k, j in enumerate(pending) if k not in used]
                    policy.reset(new_rows.tolist())
                obs = self._gather(replies)
        return records


def row_stateless(policy: Any) -> bool:
    """Whether ``policy``'s action for a row depends only on that row's current observation.

    Read from ``policy.stateless`` when the policy defines it, else true for policies whose ``cfg`` has
    ``history == 1`` and ``chunk == 1`` (no frame history, no queued action chunks). For such policies the final
    wave of an evaluation passes only the still-running rows to ``select_action`` instead of every slot.
    """
    flag = getattr(policy, "stateless", None)
    if flag is not None:
        return bool(flag)
    cfg = getattr(policy, "cfg", None)
    return getattr(cfg, "history", None) == 1 and getattr(cfg, "chunk", None) == 1


def _check_actions(actions: Any, n: int) -> np.ndarray:
    actions = np.asarray(actions)
    if actions.ndim == 0 or actions.shape[0] != n:
        raise ValueError(
            f"policy.select_action: expected {n} actions (one per env row), got array of shape {actions.shape}"
        )
    return actions


def _take_rows(obs: Mapping[str, Any], rows: np.ndarray) -> dict[str, Any]:
    return {k: ([v[i] for i in rows] if isinstance(v, list) else v[rows]) for k, v in obs.items()}


def _as_names(env: str | Sequence[str]) -> list[str]:
    from vlafoundry.envs import expand_env_names

    names = [env] if isinstance(env, str) else list(env)
    out: list[str] = []
    for n in names:
        out.extend(expand_env_names(n))
    return out


def evaluate_policy(
    policy: Any,
    env: str | Sequence[str],
    *,
    episodes: int = 100,
    num_envs: int | None = None,
    workers: int = 0,
    seed_start: int = DEFAULT_SEED_START,
    training_seeds: Sequence[tuple[int, int]] | None = None,
    on_seed_overlap: str = "shift",
    corruption: ObservationCorruption | None = None,
    paraphrases: ParaphraseMap | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    max_steps: int | None = None,
    stop_on_success: bool = True,
    rollout: VectorRollout | None = None,
    torch_threads: int | None = None,
    progress: str | None = None,
) -> EvalResult:
    """Closed-loop success of ``policy`` on ``env`` (a name, a suite such as ``"metaworld/mt10"``, or a list).

    ``episodes`` episodes are run **per task**; episode ``i`` uses seed ``seed_start + i`` (after
    :func:`resolve_seed_start` against ``training_seeds``). ``num_envs`` defaults to ``min(64, total episodes)``.
    Pass an open :class:`VectorRollout` as ``rollout`` to reuse its workers (its ``num_envs``/``env_kwargs``/
    ``torch_threads`` win). ``max_steps`` (None: each env's own limit) ends an episode after that many steps
    (build the envs with ``env_kwargs={"max_steps": N}`` too, so that the env's own truncation and return agree).
    ``progress``: a label under which episodes done / total are shown (None: silent).
    """
    names = _as_names(env)
    seed_start, note = resolve_seed_start(seed_start, episodes, training_seeds, on_seed_overlap)
    jobs: list[Job] = []
    for t, name in enumerate(names):
        jobs.extend((name, seed_start + i, t * episodes + i) for i in range(episodes))
    corruption = corruption or ObservationCorruption()
    own = rollout is None
    if rollout is None:
        rollout = VectorRollout(num_envs or min(64, len(jobs)), workers, env_kwargs, torch_threads=torch_threads)
    try:
        t0 = time.perf_counter()
        records = rollout.run(policy, jobs, corruption, paraphrases, max_steps, stop_on_success, progress)
        elapsed = time.perf_counter() - t0
    finally:
        if own:
            rollout.close()
    config = {
        "env": names,
        "episodes_per_task": episodes,
        "seed_start": seed_start,
        "seed_note": note,
        "num_envs": rollout.num_envs,
        "workers": rollout.workers,
        "corruption": corruption.label,
        "paraphrases": paraphrases.source if paraphrases is not None else None,
        "env_kwargs": dict(rollout.env_kwargs),
        "max_steps": max_steps,
    }
    return build_result(records, names, config, elapsed)


def _replay(record: Mapping[str, Any], env_kwargs: Mapping[str, Any] | None,
            observe: Callable[[Any, Any, dict[str, Any]], Any]) -> list[Any] | None:
    """Re-run an episode from its seed and recorded actions, calling ``observe(family, env, obs)`` after the reset
    and after every step; ``None`` when the first call returns ``None`` (nothing to observe in this env)."""
    from vlafoundry.envs import get_family, make_env

    family = get_family(record["env"])
    env = make_env(record["env"], **dict(env_kwargs or {}))
    try:
        first = observe(family, env, env.reset(seed=int(record["seed"])))
        if first is None:
            return None
        seen = [first]
        for a in record["actions"]:
            seen.append(observe(family, env, env.step(np.asarray(a) if isinstance(a, list) else a)[0]))
        return seen
    finally:
        env.close()


def replay_frames(record: Mapping[str, Any], env_kwargs: Mapping[str, Any] | None = None) -> list[np.ndarray]:
    """Re-run an episode from its seed and recorded actions and return its frames (the env family's
    ``render_rgb``).

    Environments are deterministic given the reset seed and the action sequence, so the replay is exactly the
    evaluated episode. Returns an empty list when the environment cannot render.
    """
    def frame(family: Any, env: Any, obs: dict[str, Any]) -> np.ndarray | None:
        f = family.render_rgb(env)
        return None if f is None else np.asarray(f)

    return _replay(record, env_kwargs, frame) or []


def replay_positions(record: Mapping[str, Any], env_kwargs: Mapping[str, Any] | None = None) -> np.ndarray | None:
    """The env family's :meth:`~vlafoundry.envs.family.EnvFamily.trajectory_point` at every step of a replayed
    episode (its seed and recorded actions): ``(T + 1, 2)``, or ``None`` when the family has no 2-D position."""
    def point(family: Any, env: Any, obs: dict[str, Any]) -> np.ndarray | None:
        xy = family.trajectory_point(obs)
        return None if xy is None else np.asarray(xy, dtype=np.float32)

    path = _replay(record, env_kwargs, point)
    return None if path is None else np.stack(path)
