"""Meta-World v3 tasks behind the vlafoundry env interface, with the benchmark's scripted experts.

Each ``reset(seed)`` re-seeds the task's random reset space, so object and goal positions are a
deterministic function of the seed (Meta-World's own MT1 draws its 50 goals the same way, from the same
``_random_reset_space``; we draw one per seed instead of one per fixed list index). Training data uses
seeds ``S .. S+N-1``; evaluation uses seeds from :data:`~vlafoundry.envs.spec.EVAL_SEED_BASE` on, so
it meets goal/object layouts never seen in training. No rendering: observations are the 39-D state.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

from vlafoundry.envs.family import EnvFamily, register_family
from vlafoundry.envs.metaworld_instructions import INSTRUCTIONS
from vlafoundry.envs.spec import EnvSpec

#: The MT10 suite, in Meta-World's order.
MT10_TASKS = (
    "reach",
    "push",
    "pick-place",
    "door-open",
    "drawer-open",
    "drawer-close",
    "button-press-topdown",
    "peg-insert-side",
    "window-open",
    "window-close",
)
METAWORLD_TASKS = tuple(INSTRUCTIONS)
# the scripted policies warn on every call that their gains exceed the action range; actions are clipped
warnings.filterwarnings("ignore", message=r"Constant\(s\) may be too high", category=UserWarning)

STATE_DIM = 39
ACTION_DIM = 4
DEFAULT_MAX_STEPS = 300


def instruction_for(task: str, seed: int | None) -> str:
    """The phrasing of ``task`` used for an episode with ``seed`` (deterministic)."""
    phrasings = INSTRUCTIONS[task]
    if seed is None:
        return phrasings[0]
    return phrasings[int(np.random.default_rng([int(seed), 7919]).integers(len(phrasings)))]


class MetaWorldEnv:
    """One Meta-World v3 task (``task`` without the ``-v3`` suffix, e.g. ``"push"``).

    Episodes end (``terminated=True``) on the first step with ``info["success"]`` when
    ``terminate_on_success`` is set, and are truncated after ``max_steps``.
    """

    def __init__(self, task: str, max_steps: int | None = None, terminate_on_success: bool = True) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from metaworld.env_dict import ALL_V3_ENVIRONMENTS
            from metaworld.policies import ENV_POLICY_MAP

        if task.endswith("-v3"):
            task = task[: -len("-v3")]
        key = f"{task}-v3"
        if key not in ALL_V3_ENVIRONMENTS:
            raise ValueError(f"unknown Meta-World task {task!r}; expected one of {', '.join(METAWORLD_TASKS)}")
        max_steps = int(max_steps or DEFAULT_MAX_STEPS)
        if max_steps <= 0:
            raise ValueError(f"max_steps: expected > 0, got {max_steps}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = ALL_V3_ENVIRONMENTS[key]()
        # behave like an MT1 task: goal observable, reset space sampled from the env's own seeded RNG
        env._partially_observable = False
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env._set_task_called = True
        env.__dict__.pop("sawyer_observation_space", None)  # cached_property: recompute with the goal visible
        env.max_path_length = max(int(env.max_path_length), max_steps)
        self._env = env
        self._policy = ENV_POLICY_MAP[key]()
        self.task = task
        self.terminate_on_success = terminate_on_success
        self._obs: np.ndarray | None = None
        self._t = 0
        self._instruction = INSTRUCTIONS[task][0]
        self.spec = EnvSpec(
            name=f"metaworld/{task}",
            action_type="continuous",
            num_actions=None,
            action_dim=ACTION_DIM,
            action_low=[-1.0] * ACTION_DIM,
            action_high=[1.0] * ACTION_DIM,
            state_dim=STATE_DIM,
            image_shape=None,
            max_episode_steps=max_steps,
        )

    @property
    def unwrapped(self) -> Any:
        return self._env

    def _convert(self, obs: np.ndarray) -> dict[str, Any]:
        return {"state": np.asarray(obs, dtype=np.float32), "instruction": self._instruction, "task": self.spec.name}

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31 - 1))
        self._env.seed(int(seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obs, _ = self._env.reset()
        self._obs = obs
        self._t = 0
        self._instruction = instruction_for(self.task, seed)
        return self._convert(obs)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (ACTION_DIM,):
            raise ValueError(f"action: expected shape ({ACTION_DIM},), got {tuple(np.shape(action))}")
        a = np.clip(a, -1.0, 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obs, reward, _, _, info = self._env.step(a)
        self._obs = obs
        self._t += 1
        info = dict(info)
        success = bool(info.get("success", 0.0))
        info["success"] = success
        terminated = success and self.terminate_on_success
        truncated = (not terminated) and self._t >= self.spec.max_episode_steps
        return self._convert(obs), float(reward), terminated, truncated, info

    def expert_action(self) -> np.ndarray:
        """The task's scripted policy action (4,) float32, clipped to [-1, 1]."""
        if self._obs is None:
            raise RuntimeError("call reset() before expert_action()")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            action = self._policy.get_action(self._obs)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    def render_rgb(self) -> None:
        """Meta-World is run without a renderer here (state-only); always ``None``."""
        return None

    def close(self) -> None:
        self._env.close()


# ---------------------------------------------------------------------------------------------- the family adapter
class MetaWorldFamily(EnvFamily):
    """``metaworld/<task>`` (v3 tasks, scripted experts) and the suites ``metaworld/mt10`` / ``metaworld/mt50``.

    ``data.image`` ``symbolic`` here means the 39-D state vector without a camera."""

    name = "metaworld"
    subgroup_keys = ("task",)
    expert_name = "metaworld scripted policy"
    expert_source = "metaworld.policies (scripted)"
    packages = ("metaworld", "mujoco")

    def canonical(self, rest: str) -> str:
        rest = rest.lower()
        return rest[: -len("-v3")] if rest.endswith("-v3") else rest

    def suites(self) -> dict[str, tuple[str, ...]]:
        return {"mt10": MT10_TASKS, "mt50": METAWORLD_TASKS}

    def validate(self, rest: str) -> None:
        if rest not in METAWORLD_TASKS:
            raise ValueError(f"unknown Meta-World task {rest!r}; expected one of {', '.join(METAWORLD_TASKS)} "
                             f"or a suite {[f'metaworld/{s}' for s in self.suites()]}")

    def make_env(self, rest: str, **kwargs: Any) -> MetaWorldEnv:
        image = kwargs.pop("image", "symbolic")
        if image not in self.image_modes:
            raise ValueError(f"image: expected one of {list(self.image_modes)} for Meta-World, got {image!r}")
        return MetaWorldEnv(rest, **kwargs)

    # Minari: the default layout (``observation`` the float32 39-D vector, ``mission`` the instruction); a user's
    # dataset of plain 39-D observations reads with the task's first phrasing.
    def default_instruction(self, task: str) -> str:
        return instruction_for(self.canonical(task.split("/", 1)[-1]), None)

    def env_name_from_minari(self, env_spec: Mapping[str, Any]) -> str | None:
        kwargs = env_spec.get("kwargs") or {}
        if str(env_spec.get("id", "")).startswith("Meta-World/") and kwargs.get("env_name"):
            return f"metaworld/{self.canonical(str(kwargs['env_name']))}"
        return None


register_family(MetaWorldFamily())
