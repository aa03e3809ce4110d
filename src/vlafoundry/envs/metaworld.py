"""Meta-World v3 tasks behind the vlafoundry env interface, with the benchmark's scripted experts.

Each ``reset(seed)`` re-seeds the task's random reset space, so object and goal positions are a
deterministic function of the seed (Meta-World's own MT1 draws its 50 goals the same way, from the same
``_random_reset_space``; we draw one per seed instead of one per fixed list index). Training data uses
seeds ``S .. S+N-1``; evaluation uses seeds from :data:`~vlafoundry.envs.spec.EVAL_SEED_BASE` on, so
it meets goal/object layouts never seen in training.

Observation modes (``image``): ``"symbolic"``, the 39-D state (hand, gripper, object and goal positions) and no
image; ``"rgb"``, camera frames rendered offscreen (:mod:`vlafoundry.envs.render`) from one or more named cameras,
uint8 ``(H, W, 3)`` for one camera and ``(K, H, W, 3)`` for ``K`` (``camera="corner2,topview"``). Proprioception
(``proprio``): ``"full"``, the 39-D state; ``"hand"``, hand xyz and gripper opening (the state's first 4 entries,
LeRobot's ``agent_pos``); ``"auto"``, ``hand`` with images and ``full`` without. The scripted expert always reads the
full state. ``corner2`` is the camera of LeRobot's Meta-World protocol: moved to (0.75, 0.075, 0.7) and its frames
turned by 180 degrees, as LeRobot's ``envs/metaworld.py`` does.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vlafoundry.envs.family import EnvFamily, register_family
from vlafoundry.envs.metaworld_instructions import INSTRUCTIONS
from vlafoundry.envs.metaworld_protocol import group_suites, mt50_task_groups
from vlafoundry.envs.render import (FastRenderer, RenderingUnavailable, configure_gl, rendering_error,
                                    require_rendering)
from vlafoundry.envs.spec import EnvSpec

configure_gl()  # MuJoCo reads MUJOCO_GL when first imported: choose the GL backend before anything imports it

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
HAND_DIM = 4  # hand xyz + gripper opening: the first entries of the state
#: Where the first object's, the second object's and the goal's xyz sit in the 39-D state (``model.position_labels
#: metaworld``); a task without a second object has zeros there.
POSITION_INDEX = (4, 5, 6, 11, 12, 13, 36, 37, 38)
ACTION_DIM = 4
DEFAULT_MAX_STEPS = 300
#: The cameras of Meta-World v3's scene (``xyz_base.xml``).
CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
DEFAULT_CAMERA = "corner2"
DEFAULT_IMAGE_SIZE = 64
RENDER_SIZE = 256  # render_rgb() frames (report GIFs)
PROPRIO_MODES = ("auto", "full", "hand")
#: LeRobot's MT50 protocol: corner2 moved nearer the table, its frames turned by 180 degrees (both axes flipped).
LEROBOT_CORNER2_POS = (0.75, 0.075, 0.7)
FLIPPED_CAMERAS = ("corner2",)


def parse_cameras(camera: str) -> tuple[str, ...]:
    """``"corner2,topview"`` -> ``("corner2", "topview")``: Meta-World camera names, each once."""
    names = tuple(c.strip() for c in str(camera).split(","))
    if not names or any(not c for c in names):
        raise ValueError(f"camera: expected a comma-separated list of camera names from {list(CAMERAS)}, "
                         f"got {camera!r}")
    unknown = [c for c in names if c not in CAMERAS]
    if unknown:
        raise ValueError(f"camera: expected names from {list(CAMERAS)}, got unknown {unknown} in {camera!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"camera: expected each camera once, got {camera!r}")
    return names


def resolve_proprio(proprio: str, image: str) -> str:
    """``auto`` -> ``hand`` with camera images, ``full`` without; ``full`` / ``hand`` unchanged."""
    if proprio not in PROPRIO_MODES:
        raise ValueError(f"proprio: expected one of {list(PROPRIO_MODES)}, got {proprio!r}")
    if proprio == "auto":
        return "hand" if image == "rgb" else "full"
    return proprio


def instruction_for(task: str, seed: int | None) -> str:
    """The phrasing of ``task`` used for an episode with ``seed`` (deterministic)."""
    phrasings = INSTRUCTIONS[task]
    if seed is None:
        return phrasings[0]
    return phrasings[int(np.random.default_rng([int(seed), 7919]).integers(len(phrasings)))]


class MetaWorldEnv:
    """One Meta-World v3 task (``task`` without the ``-v3`` suffix, e.g. ``"push"``).

    Episodes end (``terminated=True``) on the first step with ``info["success"]`` when
    ``terminate_on_success`` is set, and are truncated after ``max_steps``. ``image``, ``camera``, ``image_size``
    and ``proprio`` choose the observation (module docstring); ``render_size`` is the side of :meth:`render_rgb`
    frames.
    """

    def __init__(self, task: str, max_steps: int | None = None, terminate_on_success: bool = True,
                 image: str = "symbolic", camera: str = DEFAULT_CAMERA, image_size: int = DEFAULT_IMAGE_SIZE,
                 proprio: str = "auto", render_size: int = RENDER_SIZE) -> None:
        configure_gl()  # MuJoCo reads MUJOCO_GL when first imported: choose the backend before metaworld imports it
        if image not in ("symbolic", "rgb"):
            raise ValueError(f"image: expected 'symbolic' or 'rgb' for Meta-World, got {image!r}")
        cameras = parse_cameras(camera)
        proprio = resolve_proprio(proprio, image)
        if int(image_size) != image_size or not 8 <= int(image_size) <= 1024:
            raise ValueError(f"image_size: expected an integer in [8, 1024], got {image_size!r}")
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
        self.image_mode = image
        self.cameras = cameras
        self.image_size = int(image_size)
        self.proprio = proprio
        self.render_size = int(render_size)
        self._camera_ids = [_camera_id(env.model, c) for c in cameras]
        env.model.cam_pos[_camera_id(env.model, "corner2")] = LEROBOT_CORNER2_POS  # LeRobot's corner2
        self._renderers: dict[int, FastRenderer] = {}  # made on first use
        if image == "rgb":
            require_rendering()  # fail here, naming what to install, when nothing can render
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
            state_dim=HAND_DIM if proprio == "hand" else STATE_DIM,
            image_shape=self._image_shape() if image == "rgb" else None,
            max_episode_steps=max_steps,
        )

    @property
    def unwrapped(self) -> Any:
        return self._env

    def _image_shape(self) -> tuple[int, ...]:
        side = self.image_size
        return (side, side, 3) if len(self.cameras) == 1 else (len(self.cameras), side, side, 3)

    def _renderer(self, size: int) -> FastRenderer:
        if size not in self._renderers:
            self._renderers[size] = FastRenderer(self._env.model, size, size)
        return self._renderers[size]

    def _frame(self, renderer: FastRenderer, k: int, out: np.ndarray) -> np.ndarray:
        """Camera ``k``'s frame into ``out`` (H, W, 3), turned by 180 degrees for :data:`FLIPPED_CAMERAS`."""
        renderer.render(self._env.data, self._camera_ids[k], out=out)
        if self.cameras[k] in FLIPPED_CAMERAS:
            out[:] = out[::-1, ::-1]
        return out

    def render_cameras(self) -> np.ndarray:
        """The observation's frames: uint8 (H, W, 3) for one camera, (K, H, W, 3) for K."""
        renderer = self._renderer(self.image_size)
        side = self.image_size
        frames = np.empty((len(self.cameras), side, side, 3), dtype=np.uint8)  # (K, H, W, 3)
        for k in range(len(self.cameras)):
            self._frame(renderer, k, frames[k])
        return frames[0] if len(self.cameras) == 1 else frames

    def _convert(self, obs: np.ndarray) -> dict[str, Any]:
        state = np.asarray(obs, dtype=np.float32)
        out = {"state": state[:HAND_DIM].copy() if self.proprio == "hand" else state,
               "instruction": self._instruction, "task": self.spec.name}
        if self.image_mode == "rgb":
            out["image"] = self.render_cameras()
        return out

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

    def render_rgb(self) -> np.ndarray | None:
        """A ``render_size`` frame (H, W, 3) uint8 of the first camera for GIFs; ``None`` when nothing can render."""
        if rendering_error() is not None:
            return None
        try:
            renderer = self._renderer(self.render_size)
        except RenderingUnavailable:
            return None
        return self._frame(renderer, 0, np.empty((self.render_size, self.render_size, 3), dtype=np.uint8))

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()
        self._env.close()


def _camera_id(model: Any, name: str) -> int:
    import mujoco

    cid = int(mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name))
    if cid < 0:
        raise ValueError(f"camera: {name!r} is not a camera of this Meta-World scene")
    return cid


# ---------------------------------------------------------------------------------------------- the family adapter
class MetaWorldFamily(EnvFamily):
    """``metaworld/<task>`` (v3 tasks, scripted experts), the suites ``metaworld/mt10`` / ``metaworld/mt50`` and
    MT50's difficulty groups ``metaworld/mt50-easy`` / ``-medium`` / ``-hard`` / ``-very-hard`` (LeRobot's).

    ``data.image`` ``symbolic`` means the 39-D state vector without a camera; ``rgb`` camera frames
    (``data.camera``, ``data.image_size``) with ``data.proprio`` proprioception (module docstring)."""

    name = "metaworld"
    subgroup_keys = ("task",)
    expert_name = "metaworld scripted policy"
    expert_source = "metaworld.policies (scripted)"
    packages = ("metaworld", "mujoco")
    image_modes = ("symbolic", "rgb")
    observation_options = ("camera", "image_size", "proprio")
    trajectory_axes = ("hand x (m)", "hand y (m)")

    def trajectory_point(self, obs: Any) -> np.ndarray:
        return np.asarray(obs["state"][:2], dtype=np.float32)  # the hand's x, y (first entries of full and hand state)

    def canonical(self, rest: str) -> str:
        rest = rest.lower()
        return rest[: -len("-v3")] if rest.endswith("-v3") else rest

    def suites(self) -> dict[str, tuple[str, ...]]:
        return {"mt10": MT10_TASKS, "mt50": METAWORLD_TASKS, **group_suites()}

    def task_groups(self, names: Sequence[str]) -> dict[str, Any] | None:
        """LeRobot's MT50 difficulty groups evaluated whole (:mod:`vlafoundry.envs.metaworld_protocol`)."""
        return mt50_task_groups(names, self.name)

    def validate(self, rest: str) -> None:
        if rest not in METAWORLD_TASKS:
            raise ValueError(f"unknown Meta-World task {rest!r}; expected one of {', '.join(METAWORLD_TASKS)} "
                             f"or a suite {[f'metaworld/{s}' for s in self.suites()]}")

    def make_env(self, rest: str, **kwargs: Any) -> MetaWorldEnv:
        image = kwargs.get("image", "symbolic")
        if image not in self.image_modes:
            raise ValueError(f"image: expected one of {list(self.image_modes)} for Meta-World, got {image!r}")
        return MetaWorldEnv(rest, **kwargs)

    def env_kwargs(self, data_cfg: Any) -> dict[str, Any]:
        return {"image": data_cfg.image, "camera": getattr(data_cfg, "camera", DEFAULT_CAMERA),
                "image_size": int(getattr(data_cfg, "image_size", DEFAULT_IMAGE_SIZE)),
                "proprio": getattr(data_cfg, "proprio", "auto")}

    def validate_observation(self, cfg: Any) -> None:
        parse_cameras(getattr(cfg, "camera", DEFAULT_CAMERA))
        resolve_proprio(getattr(cfg, "proprio", "auto"), cfg.image)

    # Minari: the default layout (``observation`` the float32 39-D vector, ``mission`` the instruction); a user's
    # dataset of plain 39-D observations reads with the task's first phrasing.
    def position_labels(self, scheme: str) -> tuple[dict[str, Any], Any]:
        """``metaworld``: the first and second object's and the goal's xyz (:data:`POSITION_INDEX`), from a replay with
        the symbolic observation (the full 39-D state)."""
        if scheme != "metaworld":
            raise ValueError(f"model.position_labels: expected 'metaworld' or 'none' for Meta-World data, got {scheme!r}")
        index = np.asarray(POSITION_INDEX)
        return {"image": "symbolic", "proprio": "full"}, lambda states: np.asarray(states)[..., index]

    def default_instruction(self, task: str) -> str:
        return instruction_for(self.canonical(task.split("/", 1)[-1]), None)

    def env_name_from_minari(self, env_spec: Mapping[str, Any]) -> str | None:
        kwargs = env_spec.get("kwargs") or {}
        if str(env_spec.get("id", "")).startswith("Meta-World/") and kwargs.get("env_name"):
            return f"metaworld/{self.canonical(str(kwargs['env_name']))}"
        return None


register_family(MetaWorldFamily())
