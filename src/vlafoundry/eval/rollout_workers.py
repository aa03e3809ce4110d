"""The env side of :class:`vlafoundry.eval.rollout.VectorRollout`: environment slots and the worker processes that
step them.

A :class:`_SlotGroup` owns a contiguous chunk of slots; it lives in a worker process (:func:`_worker_main`, reached
through :class:`_RemoteGroup`) or in the calling process (:class:`_LocalGroup`, ``workers=0``). Every reply starts
with the ``_OBS_FIELDS`` observation arrays that ``VectorRollout._gather`` stacks into the policy batch. Observation
corruption and instruction paraphrasing happen here, per slot, with per-episode generators seeded from the episode
seed (see the module docstring of :mod:`vlafoundry.eval.rollout`).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlafoundry.eval.corruption import ObservationCorruption
from vlafoundry.eval.paraphrase import ParaphraseMap

Job = tuple[str, int, int]  # (env name, seed, global episode index)
_OBS_FIELDS = 5  # image, state, instructions, present flags, tasks: the head of every worker reply


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
