"""Run the expert for one episode, with a step cap and a time cap.

The BabyAI bot can loop forever inside ``replan()`` on a few seeds of Unlock / GoToImpUnlock, so a step cap alone is
not enough: a POSIX interval timer raises inside the loop. The cap counts the process's **CPU time**, not the wall
clock, so which seeds time out does not depend on how loaded the machine is (a dataset generated on a busy machine
has the same bytes); a wall-clock backstop, far longer, catches an expert that blocks without computing.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from vlafoundry.data.episodes import Episode
from vlafoundry.envs import get_family

WALL_BACKSTOP_FACTOR = 30.0  # wall-clock backstop = max(60 s, this x the CPU-time cap)


class EpisodeTimeout(Exception):
    """Raised inside an episode that exceeded its time budget; ``args[0]`` says which ("cpu" or "wall")."""


def _raise_cpu_timeout(signum: int, frame: Any) -> None:
    raise EpisodeTimeout("cpu")


def _raise_wall_timeout(signum: int, frame: Any) -> None:
    raise EpisodeTimeout("wall")


def wall_backstop(cpu_seconds: float) -> float:
    return max(60.0, WALL_BACKSTOP_FACTOR * cpu_seconds)


@contextlib.contextmanager
def time_limit(cpu_seconds: float | None, wall_seconds: float | None = None) -> Iterator[None]:
    """Raise :class:`EpisodeTimeout` once this process has used ``cpu_seconds`` of CPU time (``SIGPROF``) or
    ``wall_seconds`` of wall clock (``SIGALRM``; default :func:`wall_backstop`) inside the block. Main thread on
    POSIX only; elsewhere no limit."""
    usable = (
        cpu_seconds is not None
        and cpu_seconds > 0
        and hasattr(signal, "setitimer")
        and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield
        return
    assert cpu_seconds is not None
    wall = wall_backstop(cpu_seconds) if wall_seconds is None else wall_seconds
    old_prof = signal.signal(signal.SIGPROF, _raise_cpu_timeout)
    old_alrm = signal.signal(signal.SIGALRM, _raise_wall_timeout)
    signal.setitimer(signal.ITIMER_PROF, float(cpu_seconds))
    signal.setitimer(signal.ITIMER_REAL, float(wall))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0.0)
        signal.setitimer(signal.ITIMER_REAL, 0.0)
        signal.signal(signal.SIGPROF, old_prof)
        signal.signal(signal.SIGALRM, old_alrm)


def check_action_noise(action_noise: float, spec: Any | None = None) -> None:
    """``action_noise``: a finite number >= 0 (continuous: the noise scale), and <= 1 for discrete actions (a
    probability). Without the env's ``spec`` only the first part is checked (before building an env)."""
    if not (action_noise >= 0 and math.isfinite(action_noise)):
        raise ValueError(f"action_noise: expected a finite number >= 0, got {action_noise}")
    if spec is not None and spec.action_type == "discrete" and action_noise > 1:
        raise ValueError(
            f"action_noise: expected a probability in [0, 1] for {spec.name}'s discrete actions, got {action_noise}"
        )


def run_expert_episode(
    env: Any, seed: int, timeout_s: float | None = 10.0, action_noise: float = 0.0,
    expert: Callable[[Any], Any] | None = None,
) -> tuple[Episode | None, str]:
    """Roll out the expert from ``env.reset(seed)``: ``expert(env)`` gives each action (default: the env family's
    :meth:`~vlafoundry.envs.EnvFamily.expert_action`).

    ``action_noise`` > 0 injects noise into the executed actions as DART does (Laskey et al., 2017) while the episode
    records the expert's clean action as the label: continuous actions step the env with
    ``clip(expert + N(0, (action_noise * half_range)^2))``; discrete actions are replaced, with probability
    ``action_noise`` (<= 1), by an action drawn uniformly from all ``num_actions`` (the expert is told which action
    was executed and replans from where it lands). The demonstrations then visit the states a cloned policy drifts
    into and show how the expert recovers from them. The noise is drawn from a generator seeded by ``seed``, so an
    episode's bytes do not depend on the worker that ran it.

    ``timeout_s`` caps the episode's CPU time (see :func:`time_limit`). Returns ``(episode, "ok")`` on success, else
    ``(None, reason)`` with reason ``"timeout"`` (CPU time), ``"timeout (wall clock)"`` (the backstop),
    ``"not solved in N steps"`` or ``"error: ..."``.
    """
    check_action_noise(action_noise, env.spec)
    if expert is None:
        expert = get_family(env.spec.name).expert_action
    discrete = env.spec.action_type == "discrete"
    if action_noise > 0:
        rng = np.random.default_rng([int(seed), 0xDA27])
        if not discrete:
            low = np.asarray(env.spec.action_low, dtype=np.float64)
            high = np.asarray(env.spec.action_high, dtype=np.float64)
            scale = action_noise * (high - low) / 2.0  # (A,)
    cap = int(env.spec.max_episode_steps) + 1
    images: list[np.ndarray] = []
    states: list[np.ndarray] = []
    actions: list[Any] = []
    rewards: list[float] = []
    terms: list[bool] = []
    truncs: list[bool] = []
    success = False
    try:
        with time_limit(timeout_s):
            obs = env.reset(seed=seed)
            instruction = obs["instruction"]
            has_image = "image" in obs
            for _ in range(cap):
                if has_image:
                    images.append(obs["image"])
                states.append(obs["state"])
                action = expert(env)
                executed = action
                if action_noise > 0 and discrete:
                    if rng.random() < action_noise:
                        executed = type(action)(rng.integers(env.spec.num_actions))
                elif action_noise > 0:
                    executed = np.clip(action + rng.normal(0.0, 1.0, size=scale.shape) * scale, low, high)
                    executed = executed.astype(np.asarray(action).dtype)
                obs, reward, terminated, truncated, info = env.step(executed)
                actions.append(action)
                rewards.append(reward)
                terms.append(terminated)
                truncs.append(truncated)
                if terminated or truncated:
                    success = bool(info.get("success", False))
                    break
    except EpisodeTimeout as exc:
        return None, "timeout (wall clock)" if exc.args == ("wall",) else "timeout"
    except Exception as exc:  # an expert crash is a failed demonstration, not a failed run
        return None, f"error: {type(exc).__name__}: {exc}"
    if not success:
        return None, f"not solved in {len(actions)} steps"
    if has_image:
        images.append(obs["image"])
    states.append(obs["state"])
    return {
        "seed": int(seed),
        "task": env.spec.name,
        "instruction": instruction,
        "image": np.stack(images).astype(np.uint8) if has_image else None,  # (n+1, H, W, C)
        "state": np.stack(states).astype(np.float32),  # (n+1, S)
        "action": np.asarray(actions, dtype=np.int64 if discrete else np.float32),  # (n,) | (n, A)
        "reward": np.asarray(rewards, dtype=np.float32),
        "terminated": np.asarray(terms, dtype=bool),
        "truncated": np.asarray(truncs, dtype=bool),
    }, "ok"
