"""BabyAI (Minigrid) levels behind the vlafoundry env interface, with the ``BabyAIBot`` expert."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vlafoundry.envs.babyai_missions import mission_subgroups
from vlafoundry.envs.family import EnvFamily, register_family
from vlafoundry.envs.spec import EnvSpec

if TYPE_CHECKING:
    from vlafoundry.envs.augment import ColourPermutation

NUM_DIRECTIONS = 4


def babyai_gym_id(level: str) -> str:
    return f"BabyAI-{level}-v0"


def babyai_levels() -> list[str]:
    """All BabyAI level names registered by the installed minigrid (e.g. ``"GoToLocal"``)."""
    import gymnasium as gym
    import minigrid  # noqa: F401  (registers the envs)

    return sorted(k[len("BabyAI-") : -len("-v0")] for k in gym.registry if k.startswith("BabyAI-") and k.endswith("-v0"))


def colour_permutation(hold_out_pairs: Sequence[str] = ()) -> ColourPermutation:
    """The :class:`~vlafoundry.envs.augment.ColourPermutation` augmentation for BabyAI's symbolic grid: Minigrid's six
    colours (channel 1, ids in ``COLOR_TO_IDX`` order) relabelled on doors, keys, balls and boxes, whose colours
    are the only thing BabyAI's instructions say about colour; walls, floor, goal and lava keep theirs.
    ``hold_out_pairs`` (``"red ball"``, ...): only permutations that relabel no instruction into one of them."""
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX

    from vlafoundry.envs.augment import ColourPermutation  # imports torch: only when the augmentation is used

    names = [c for c, _ in sorted(COLOR_TO_IDX.items(), key=lambda kv: kv[1])]
    types = ("door", "key", "ball", "box")
    return ColourPermutation(names, [OBJECT_TO_IDX[t] for t in types], hold_out_pairs=hold_out_pairs,
                             object_names={OBJECT_TO_IDX[t]: t for t in types})  # fmt: skip


#: the dataset metadata file (``vlafoundry.data.format.META_FILE``; ``envs`` must not import ``data``)
_DATASET_META = "vlafoundry.json"


def dataset_hold_out_pairs(data_cfg: Any) -> list[str]:
    """The held-out pairs of ``data_cfg``'s training data: ``data.hold_out_pairs`` together with those recorded in
    the dataset's metadata (``generation.hold_out_pairs``), so a dataset passed by ``data.path`` that held pairs out
    keeps them out of the augmented batches even when the config does not name them."""
    from pathlib import Path

    from vlafoundry.io import read_json

    pairs = {str(p) for p in (getattr(data_cfg, "hold_out_pairs", None) or [])}
    root = data_cfg.dataset_dir() if hasattr(data_cfg, "dataset_dir") else None
    if root is not None and (Path(root) / _DATASET_META).is_file():
        meta = read_json(Path(root) / _DATASET_META)
        pairs.update(str(p) for p in ((meta.get("generation") or {}).get("hold_out_pairs") or []))
    return sorted(pairs)


def unknown_level_message(level: str) -> str:
    """``unknown BabyAI level 'babyai/BossLevl'; did you mean 'babyai/BossLevel'?`` (names as the CLI takes them)."""
    import difflib

    close = difflib.get_close_matches(level, babyai_levels(), n=1)
    hint = f"; did you mean 'babyai/{close[0]}'?" if close else "; `python -c \"import vlafoundry.envs as e; " \
        "print(e.babyai_levels())\"` lists them"
    return f"unknown BabyAI level 'babyai/{level}'{hint}"


def direction_one_hot(direction: int) -> np.ndarray:
    state = np.zeros(NUM_DIRECTIONS, dtype=np.float32)  # (4,)
    state[int(direction)] = 1.0
    return state


def directions_one_hot(direction: np.ndarray) -> np.ndarray:
    """Directions (n,) int -> one-hot states (n, 4) float32 (the ``state`` of stored Minari episodes)."""
    direction = np.asarray(direction, dtype=np.int64).reshape(-1)
    out = np.zeros((len(direction), NUM_DIRECTIONS), dtype=np.float32)
    out[np.arange(len(direction)), direction] = 1.0
    return out


def _pov_frames(env: Any, tile_size: int) -> Any:
    """``env`` with egocentric RGB frames: Minigrid's ``RGBImgPartialObsWrapper``, except that while the agent
    carries an object its own cell shows that object instead of the agent's triangle, as the symbolic view does
    (Minigrid draws the triangle over it: a carried ball is hidden, a key or box barely shows). The triangle carries
    no information in an egocentric view (always the same cell, always pointing up), so frames without a carried
    object are Minigrid's, pixel for pixel."""
    from minigrid.wrappers import RGBImgPartialObsWrapper

    class CarriedObjectPOV(RGBImgPartialObsWrapper):
        def observation(self, obs: dict[str, Any]) -> dict[str, Any]:
            base = self.unwrapped
            if base.carrying is None:
                return super().observation(obs)
            grid, visible = base.gen_obs_grid()  # the carried object sits in the agent's cell of this grid
            size = base.agent_view_size
            frame = grid.render(self.tile_size, agent_pos=(size // 2, size - 1), agent_dir=None,
                                highlight_mask=visible)  # (7*tile, 7*tile, 3), no triangle
            return {**obs, "image": frame}

    return CarriedObjectPOV(env, tile_size=tile_size)


class BabyAIEnv:
    """One BabyAI level.

    Observations: ``image`` is the egocentric 7x7x3 symbolic view (``image="symbolic"``) or its RGB
    rendering (``image="rgb"``, ``7*tile_size`` pixels a side: Minigrid's ``RGBImgPartialObsWrapper``, with the
    carried object drawn in the agent's own cell instead of the agent's triangle, as in the symbolic view);
    ``state`` the one-hot agent direction (4,); ``instruction`` the level's mission.
    Success = the episode terminated with positive reward (BabyAI's only way to terminate).

    Args:
        level: level name without prefix/suffix, e.g. ``"GoToLocal"``.
        image: ``"symbolic"`` or ``"rgb"``.
        max_steps: override the level's step cap.
        tile_size: pixels per cell for ``image="rgb"``.
        render_tile_size: pixels per cell of :meth:`render_rgb` (full-grid frames for GIFs).
    """

    def __init__(
        self,
        level: str,
        image: str = "symbolic",
        max_steps: int | None = None,
        tile_size: int = 8,
        render_tile_size: int = 16,
    ) -> None:
        import gymnasium as gym
        import minigrid  # noqa: F401

        if image not in ("symbolic", "rgb"):
            raise ValueError(f"image: expected 'symbolic' or 'rgb', got {image!r}")
        kwargs: dict[str, Any] = {}
        if max_steps is not None:
            kwargs["max_steps"] = int(max_steps)
        try:
            env = gym.make(babyai_gym_id(level), **kwargs)
        except gym.error.Error:
            raise ValueError(unknown_level_message(level)) from None
        if image == "rgb":
            env = _pov_frames(env, tile_size)
        self._env = env
        self.level = level
        self.image_mode = image
        self.render_tile_size = render_tile_size
        self._bot: Any = None
        self._last_action: int | None = None  # executed since the bot's last replan (it is told, see expert_action)
        self._mission = ""
        image_shape = tuple(int(v) for v in env.observation_space["image"].shape)
        if not env.unwrapped.max_steps:  # BabyAI levels size their step cap at the first reset
            with contextlib.redirect_stdout(io.StringIO()):
                env.reset(seed=0)
        self.spec = EnvSpec(
            name=f"babyai/{level}",
            action_type="discrete",
            num_actions=int(env.action_space.n),
            action_dim=1,
            action_low=None,
            action_high=None,
            state_dim=NUM_DIRECTIONS,
            image_shape=image_shape,
            max_episode_steps=int(env.unwrapped.max_steps),
        )

    @property
    def unwrapped(self) -> Any:
        return self._env.unwrapped

    def _convert(self, raw: dict[str, Any]) -> dict[str, Any]:
        return {
            "image": np.asarray(raw["image"], dtype=np.uint8),
            "state": direction_one_hot(raw["direction"]),
            "instruction": str(raw["mission"]),
            "task": self.spec.name,
        }

    def reset(self, seed: int | None = None) -> dict[str, Any]:
        # level generation prints "Sampling rejected: ..." on stdout; keep it out of progress bars
        with contextlib.redirect_stdout(io.StringIO()):
            raw, _ = self._env.reset(seed=seed)
        self._bot = None
        self._last_action = None
        self._mission = str(raw["mission"])
        return self._convert(raw)

    def step(self, action: int | np.integer | np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        a = int(np.asarray(action).reshape(-1)[0]) if np.ndim(action) else int(action)
        if not 0 <= a < self.spec.num_actions:  # type: ignore[operator]
            raise ValueError(f"action: expected an int in [0, {self.spec.num_actions}), got {a}")
        raw, reward, terminated, truncated, info = self._env.step(a)
        self._last_action = a
        info = dict(info)
        info["success"] = bool(terminated and reward > 0)
        return self._convert(raw), float(reward), bool(terminated), bool(truncated), info

    def expert_action(self) -> int:
        """The ``BabyAIBot`` action for the current state (the bot is created lazily after each reset).

        The bot is told which action was actually executed since its last call, so it replans correctly when
        someone else acted (noise-injected demonstrations, a policy being corrected)."""
        taken = self._last_action
        if self._bot is None:
            from minigrid.utils.baby_ai_bot import BabyAIBot

            with contextlib.redirect_stdout(io.StringIO()):
                self._bot = BabyAIBot(self._env.unwrapped)
            taken = None  # a new bot plans from the current state; it took no action yet
        return int(self._bot.replan(taken))

    def render_rgb(self) -> np.ndarray:
        """Full-grid RGB frame (H, W, 3) uint8 with the agent's view highlighted."""
        return np.asarray(self._env.unwrapped.get_frame(highlight=True, tile_size=self.render_tile_size), dtype=np.uint8)

    def close(self) -> None:
        self._env.close()


# ---------------------------------------------------------------------------------------------- the family adapter
class BabyAIFamily(EnvFamily):
    """``babyai/<Level>``: any BabyAI level of the installed minigrid, with the BabyAIBot expert."""

    name = "babyai"
    subgroup_keys = ("template", "object", "colour", "task")
    augmentations = ("colour",)
    image_modes = ("symbolic", "rgb")
    name_pattern = "babyai/<Level>"
    expert_name = "BabyAIBot"
    expert_source = "minigrid.utils.baby_ai_bot.BabyAIBot"
    packages = ("minigrid",)

    def validate(self, rest: str) -> None:
        if not rest:
            raise ValueError("env name: expected 'babyai/<Level>', e.g. 'babyai/GoToLocal', got 'babyai/'")
        if rest not in babyai_levels():
            raise ValueError(unknown_level_message(rest))

    def make_env(self, rest: str, **kwargs: Any) -> BabyAIEnv:
        return BabyAIEnv(rest, **kwargs)

    def env_kwargs(self, data_cfg: Any) -> dict[str, Any]:
        return {"image": data_cfg.image}

    # Minari: Minigrid's own observation layout (``direction``, ``image``, ``mission``; the mission as a ``Text``
    # space, since Minari cannot store Minigrid's ``MissionSpace``), so Farama's published BabyAI datasets and ours
    # share one schema.
    def minari_spaces(self, spec: Mapping[str, Any], mission_space: Any) -> tuple[Any, Any]:
        from gymnasium import spaces

        obs = spaces.Dict({
            "direction": spaces.Discrete(NUM_DIRECTIONS),
            "image": spaces.Box(0, 255, tuple(int(v) for v in spec["image_shape"]), np.uint8),
            "mission": mission_space,
        })
        return obs, spaces.Discrete(int(spec["num_actions"]))

    def to_minari_observations(self, episode: Mapping[str, Any]) -> dict[str, Any]:
        n1 = len(episode["state"])
        return {
            "direction": np.argmax(episode["state"], axis=1).astype(np.int64),  # (n+1,)
            "image": episode["image"],
            "mission": [episode["instruction"]] * n1,
        }

    def from_minari_observations(self, observations: Any, task: str) -> tuple[np.ndarray, np.ndarray | None, str]:
        if not isinstance(observations, Mapping) or not {"direction", "image", "mission"} <= set(observations):
            got = sorted(observations) if isinstance(observations, Mapping) else type(observations).__name__
            raise ValueError(f"BabyAI Minari dataset: expected observations with direction, image and mission, got {got}")
        return (directions_one_hot(np.asarray(observations["direction"])),
                np.asarray(observations["image"], dtype=np.uint8), str(observations["mission"][0]))

    def minari_env_spec(self, rest: str) -> Any:
        import gymnasium as gym
        import minigrid  # noqa: F401  (registers the envs)

        return gym.spec(babyai_gym_id(rest))

    def env_name_from_minari(self, env_spec: Mapping[str, Any]) -> str | None:
        env_id = str(env_spec.get("id", ""))
        if env_id.startswith("BabyAI-") and env_id.endswith("-v0"):
            return f"babyai/{env_id[len('BabyAI-'):-len('-v0')]}"
        return None

    def validate_data(self, data_cfg: Any) -> None:
        super().validate_data(data_cfg)
        if data_cfg.augment == "colour" and data_cfg.image != "symbolic":
            raise ValueError("data.augment: expected 'none' with data.image 'rgb' (colour permutation relabels the "
                             f"symbolic grid's colour channel), got {data_cfg.augment!r}")

    def instruction_subgroups(self, instruction: str, task: str | None = None) -> dict[str, str]:
        return mission_subgroups(instruction, task)

    def cell_labels(self, scheme: str, image_shape: Any) -> Any:
        """``minigrid``: the symbolic view's (object, colour, state) per tile of egocentric RGB frames, read from
        the pixels by :class:`~vlafoundry.envs.babyai_cells.MinigridTileDecoder` (exact on this env's frames)."""
        shape = tuple(int(v) for v in image_shape)
        if scheme != "minigrid":
            raise ValueError(f"model.cell_labels: expected 'minigrid' or 'none' for BabyAI data, got {scheme!r}")
        view = 7  # Minigrid's agent_view_size of the BabyAI levels
        if len(shape) != 3 or shape[2] != 3 or shape[0] != shape[1] or shape[0] % view or shape[0] == view:
            raise ValueError(f"model.cell_labels='minigrid' needs egocentric RGB frames ({view}*t, {view}*t, 3) "
                             f"(data.image rgb), got image shape {shape}")
        from vlafoundry.envs.babyai_cells import tile_decoder

        return tile_decoder(shape[0] // view)

    def augmentation(self, kind: str, data_cfg: Any) -> Any:
        if kind == "colour":
            return colour_permutation(dataset_hold_out_pairs(data_cfg))
        return super().augmentation(kind, data_cfg)


register_family(BabyAIFamily())
