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
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlafoundry.envs.spec import EVAL_SEED_BASE
from vlafoundry.eval.corruption import MODALITIES, NOISE_WORDS, ObservationCorruption  # noqa: F401 (re-exported)
from vlafoundry.eval.paraphrase import ParaphraseMap
from vlafoundry.eval.stats import wilson_interval
from vlafoundry.eval.subgroups import subgroup_success
from vlafoundry.eval.task_groups import group_success, task_groups_for

DEFAULT_SEED_START = EVAL_SEED_BASE  # the one constant, in vlafoundry.envs.spec
Job = tuple[str, int, int]  # (env name, seed, global episode index)
_OBS_FIELDS = 5  # image, state, instructions, present flags, tasks: the head of every worker reply


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


# ----------------------------------------------------------------------------------------------- env-side slots


@dataclass
class _RunOptions:
    corruption: ObservationCorruption = field(default_factory=ObservationCorruption)
    paraphrases: ParaphraseMap | None = None
    max_steps: int | None = None
    stop_on_success: bool = True


class _Slot:
    """One environment slot: the env (created per env name, reused across episodes) and its running episode."""

    def __init__(self, make_env: Callable[..., Any], env_kwargs: Mapping[str, Any]) -> None:
        self._make_env = make_env
        self._env_kwargs = dict(env_kwargs)
        self.env: Any = None
        self.env_name: str | None = None
        self.job: Job | None = None
        self.rng: np.random.Generator | None = None
        self.view_rng: np.random.Generator | None = None
        self.view_params: Any = None
        self.instruction = ""
        self.instruction_present = True

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def reset(self, job: Job, opts: _RunOptions) -> dict[str, Any]:
        name, seed, index = job
        if self.env_name != name:
            self.close()
            self.env = self._make_env(name, **self._env_kwargs)
            self.env_name = name
        obs = self.env.reset(seed=int(seed))
        self.job = job
        self.rng = np.random.default_rng([int(seed), 0x5EED])
        # per-episode image draws (occluder, jitter, shift) from their own stream: the per-step draws of the
        # other conditions stay as they were; drawn at the episode's first frame (its shape is known then)
        self.view_rng = np.random.default_rng([int(seed), 0x5EED, 1])
        self.view_params: Any = None
        self.max_steps = opts.max_steps or int(self.env.spec.max_episode_steps)
        original = str(obs["instruction"])
        used = original
        self.paraphrased = False
        if opts.paraphrases is not None:
            rewritten = opts.paraphrases.rewrite(original, choice=seed)
            if rewritten is not None:
                used, self.paraphrased = rewritten, True
        self.instruction, self.instruction_present = opts.corruption.corrupt_instruction(used, self.rng)
        self.record: dict[str, Any] = {
            "index": int(index),
            "env": name,
            "task": str(obs.get("task", name)),
            "seed": int(seed),
            "instruction": original,
            "policy_instruction": self.instruction,
            "paraphrased": self.paraphrased,
            "success": False,
            "length": 0,
            "return": 0.0,
            "actions": [],
        }
        return obs

    def step(self, action: Any, opts: _RunOptions) -> tuple[dict[str, Any], bool]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        rec = self.record
        rec["length"] += 1
        rec["return"] += float(reward)
        rec["actions"].append(np.asarray(action).tolist())  # plain Python (int or list of float) for JSON
        if bool(info.get("success", False)):
            rec["success"] = True
        done = bool(terminated or truncated) or rec["length"] >= self.max_steps
        done = done or (opts.stop_on_success and rec["success"])
        return obs, done


class _SlotGroup:
    """A contiguous chunk of slots; lives in a worker process (or in-process for ``workers=0``)."""

    def __init__(self, n: int, env_kwargs: Mapping[str, Any]) -> None:
        from vlafoundry.envs import make_env

        self.slots = [_Slot(make_env, env_kwargs) for _ in range(n)]
        self.opts = _RunOptions()
        self.active = np.zeros(n, dtype=bool)
        self.image: np.ndarray | None = None
        self.state: np.ndarray | None = None
        self.present = np.ones((n, 3), dtype=bool)
        self.instructions = [""] * n
        self.tasks = [""] * n  # task of each slot's episode ("" until its first episode)

    def configure(self, opts: _RunOptions) -> None:
        self.opts = opts

    def close(self) -> None:
        for s in self.slots:
            s.close()

    def _write(self, i: int, obs: Mapping[str, Any]) -> None:
        slot = self.slots[i]
        image = None if obs.get("image") is None else np.asarray(obs["image"])
        corruption = self.opts.corruption
        if image is not None and corruption.per_episode_view and slot.view_params is None:
            slot.view_params = corruption.frame_params(image.shape, slot.view_rng)
        image, state, img_p, st_p = corruption.corrupt_step(
            image, np.asarray(obs["state"], dtype=np.float32), slot.rng, slot.view_params
        )
        if self.state is None or self.state.shape[1:] != state.shape:
            self.state = np.zeros((len(self.slots), *state.shape), dtype=np.float32)
        self.state[i] = state
        if image is not None:
            if self.image is None or self.image.shape[1:] != image.shape:
                self.image = np.zeros((len(self.slots), *image.shape), dtype=image.dtype)
            self.image[i] = image
        self.present[i] = (img_p, slot.instruction_present, st_p)
        self.instructions[i] = slot.instruction
        self.tasks[i] = slot.record["task"]

    def _batch(self) -> tuple[Any, ...]:
        # the first _OBS_FIELDS entries of every reply; VectorRollout._gather turns them into the policy batch
        return (self.image, self.state, list(self.instructions), self.present.copy(), list(self.tasks))

    def start(self, jobs: Sequence[Job | None]) -> tuple[Any, ...]:
        """Reset every slot that has a job; others become idle."""
        for i, job in enumerate(jobs):
            self.active[i] = job is not None
            if job is not None:
                self._write(i, self.slots[i].reset(job, self.opts))
        return (*self._batch(), self.active.copy())

    def step(self, actions: np.ndarray, next_jobs: Sequence[Job | None]) -> tuple[Any, ...]:
        """Step running slots; finished ones start ``next_jobs[i]`` (or go idle). One reply per call."""
        started = np.zeros(len(self.slots), dtype=bool)
        finished: list[dict[str, Any]] = []
        for i in np.flatnonzero(self.active):
            slot = self.slots[i]
            obs, done = slot.step(actions[i], self.opts)
            if done:
                finished.append(slot.record)
                job = next_jobs[i]
                if job is None:
                    self.active[i] = False
                    continue
                obs = slot.reset(job, self.opts)
                started[i] = True
            self._write(i, obs)
        return (*self._batch(), self.active.copy(), started, finished)


def _worker_main(conn: Any, n: int, env_kwargs: Mapping[str, Any]) -> None:
    try:
        group = _SlotGroup(n, env_kwargs)
        conn.send(("ok", None))
    except Exception:  # report construction errors to the parent instead of dying silently
        conn.send(("error", traceback.format_exc()))
        return
    try:
        while True:
            cmd, args = conn.recv()
            if cmd == "close":
                group.close()
                conn.send(("ok", None))
                return
            try:
                conn.send(("ok", getattr(group, cmd)(*args)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        group.close()


class _RemoteGroup:
    def __init__(self, ctx: Any, n: int, env_kwargs: Mapping[str, Any]) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, n, dict(env_kwargs)), daemon=True)
        self.proc.start()
        child.close()

    def send(self, cmd: str, *args: Any) -> None:
        self.conn.send((cmd, args))

    def recv(self) -> Any:
        status, payload = self.conn.recv()
        if status == "error":
            raise RuntimeError(f"evaluation worker failed:\n{payload}")
        return payload

    def close(self) -> None:
        try:
            self.send("close")
            self.recv()
        except (OSError, EOFError, RuntimeError, BrokenPipeError):
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.terminate()
        self.conn.close()


class _LocalGroup:
    def __init__(self, n: int, env_kwargs: Mapping[str, Any]) -> None:
        self.group = _SlotGroup(n, env_kwargs)
        self._reply: Any = None

    def send(self, cmd: str, *args: Any) -> None:
        self._reply = getattr(self.group, cmd)(*args)

    def recv(self) -> Any:
        reply, self._reply = self._reply, None
        return reply

    def close(self) -> None:
        self.group.close()


# ------------------------------------------------------------------------------------------------ main process


@dataclass
class EvalResult:
    """Outcome of a closed-loop evaluation.

    Attributes:
        rows: one summary row per task (and an ``"all"`` row when there are several tasks), see
            :func:`summarize_episodes`.
        episodes: per-episode records sorted by index: ``index, env, task, seed, instruction`` (original),
            ``policy_instruction`` (what the policy saw), ``paraphrased, success, length, return, actions``.
        subgroups: per-subgroup success table (:func:`vlafoundry.eval.subgroups.subgroup_success`).
        config: the evaluation settings (env names, episodes, seeds, corruption, ...).
        elapsed_s: wall time of the rollouts.
        task_groups: success per benchmark task group beside the published rows
            (:func:`vlafoundry.eval.task_groups.group_success`; Meta-World MT50's difficulty groups), or None.
    """

    rows: list[dict[str, Any]]
    episodes: list[dict[str, Any]]
    subgroups: dict[str, Any]
    config: dict[str, Any]
    elapsed_s: float
    task_groups: dict[str, Any] | None = None

    @property
    def summary(self) -> dict[str, Any]:
        """The overall row (``"all"`` for suites, the single task's row otherwise)."""
        return self.rows[-1]

    @property
    def episodes_per_s(self) -> float:
        return len(self.episodes) / max(self.elapsed_s, 1e-9)

    def to_dict(self, include_actions: bool = False) -> dict[str, Any]:
        eps = self.episodes if include_actions else [{k: v for k, v in e.items() if k != "actions"} for e in self.episodes]
        return {
            "rows": self.rows,
            "subgroups": self.subgroups,
            "config": self.config,
            "elapsed_s": self.elapsed_s,
            "episodes_per_s": self.episodes_per_s,
            "episodes": eps,
            **({"task_groups": self.task_groups} if self.task_groups is not None else {}),
        }


def summarize_episodes(episodes: Sequence[Mapping[str, Any]], task: str, z: float = 1.96) -> dict[str, Any]:
    """Success rate with a Wilson interval, mean length and mean return of ``episodes``."""
    n = len(episodes)
    succ = sum(bool(e["success"]) for e in episodes)
    low, high = wilson_interval(succ, n, z=z)
    return {
        "task": task,
        "episodes": n,
        "successes": succ,
        "success_rate": succ / n if n else 0.0,
        "ci_low": float(low),
        "ci_high": float(high),
        "mean_length": float(np.mean([e["length"] for e in episodes])) if n else 0.0,
        "mean_return": float(np.mean([e["return"] for e in episodes])) if n else 0.0,
        "paraphrased_fraction": float(np.mean([bool(e["paraphrased"]) for e in episodes])) if n else 0.0,
    }


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


def build_result(
    records: Sequence[dict[str, Any]], names: Sequence[str], config: dict[str, Any], elapsed: float
) -> EvalResult:
    """Per-task rows (plus ``"all"`` for several tasks) and subgroup tables from episode records."""
    rows = [summarize_episodes([r for r in records if r["env"] == n], n) for n in names]
    if len(names) > 1:
        rows.append(summarize_episodes(records, "all"))
    spec = task_groups_for(names)
    groups = group_success(rows, spec) if spec is not None else None
    return EvalResult(rows, list(records), subgroup_success(records), config, elapsed, groups)


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


def replay_frames(record: Mapping[str, Any], env_kwargs: Mapping[str, Any] | None = None) -> list[np.ndarray]:
    """Re-run an episode from its seed and recorded actions and return its frames (the env family's
    ``render_rgb``).

    Environments are deterministic given the reset seed and the action sequence, so the replay is exactly the
    evaluated episode. Returns an empty list when the environment cannot render.
    """
    from vlafoundry.envs import get_family, make_env

    family = get_family(record["env"])
    env = make_env(record["env"], **dict(env_kwargs or {}))
    try:
        env.reset(seed=int(record["seed"]))
        frame = family.render_rgb(env)
        if frame is None:
            return []
        frames = [np.asarray(frame)]
        for a in record["actions"]:
            env.step(np.asarray(a) if isinstance(a, list) else a)
            frames.append(np.asarray(family.render_rgb(env)))
        return frames
    finally:
        env.close()


def select_gif_episodes(records: Sequence[Mapping[str, Any]], n: int) -> list[Mapping[str, Any]]:
    """The first ``n`` successful and first ``n`` failed episodes (by index)."""
    wins = [r for r in records if r["success"]][:n]
    fails = [r for r in records if not r["success"]][:n]
    return [*wins, *fails]
