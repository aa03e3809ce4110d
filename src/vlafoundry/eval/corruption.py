"""Robustness conditions: :class:`ObservationCorruption` removes, noises or corrupts the observations a policy sees.

The same object corrupts closed-loop observations (in the env workers of :mod:`vlafoundry.eval.rollout`, with a
per-episode generator seeded by the episode seed) and the offline rows
(:func:`vlafoundry.eval.offline.corrupt_batch`). The pixel operations are in :mod:`vlafoundry.eval.image_corruptions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vlafoundry.eval.subgroups import BABYAI_COLORS, BABYAI_OBJECTS

__all__ = ["MODALITIES", "NOISE_WORDS", "ObservationCorruption"]

MODALITIES: tuple[str, ...] = ("image", "instruction", "state")

# Vocabulary for instruction word noise: the words of the BabyAI grammar.
NOISE_WORDS: tuple[str, ...] = (
    "go", "to", "the", "a", "pick", "up", "open", "put", "next", "then", "after", "you", "and",
    "in", "front", "of", "behind", "on", "your", "left", "right", *BABYAI_COLORS, *BABYAI_OBJECTS,
)  # fmt: skip


@dataclass(frozen=True)
class ObservationCorruption:
    """How to corrupt observations for a robustness condition (identity by default).

    Attributes:
        remove: modalities to remove: any of ``"image"``, ``"instruction"``, ``"state"``. A removed modality has
            its ``<name>_present`` flag False and its data zeroed (empty string for the instruction), as
            ``vlafoundry.data.ModalityDropout`` does during training.
        state_noise: standard deviation of Gaussian noise added to the state at every step.
        image_noise: probability that each image cell (grid cell for symbolic images, pixel for RGB) is replaced,
            at every step, by the cell at a uniformly random position of the same image (keeps values valid).
        instruction_noise: probability that each instruction word is replaced, once per episode, by a random word
            of the BabyAI grammar (:data:`NOISE_WORDS`).
        image_gaussian: RGB only: standard deviation, as a fraction of 255, of Gaussian noise added to every pixel
            at every step.
        image_occlusion: RGB only: fraction of the frame covered by a mid-grey square
            (:data:`~vlafoundry.eval.image_corruptions.OCCLUSION_FILL`), placed at random once per episode.
        image_jitter: RGB only: colour jitter strength s in [0, 1): brightness, contrast, saturation and per-channel
            gains each drawn from [1 - s, 1 + s] once per episode.
        image_shift: RGB only: the view translated by this many pixels along each axis (direction drawn once per
            episode), edges repeated.
        name: label for tables; derived from the settings when omitted.

    Image corruptions apply per camera (``(H, W, C)`` or ``(K, H, W, C)`` frames) in the order shift, jitter,
    occlusion, Gaussian noise, cell noise; see :mod:`vlafoundry.eval.image_corruptions`.
    """

    remove: tuple[str, ...] = ()
    state_noise: float = 0.0
    image_noise: float = 0.0
    instruction_noise: float = 0.0
    image_gaussian: float = 0.0
    image_occlusion: float = 0.0
    image_jitter: float = 0.0
    image_shift: int = 0
    name: str | None = None

    def __post_init__(self) -> None:
        remove = (self.remove,) if isinstance(self.remove, str) else tuple(self.remove)
        for m in remove:
            if m not in MODALITIES:
                raise ValueError(f"remove: expected modalities from {MODALITIES}, got {m!r}")
        object.__setattr__(self, "remove", remove)
        for arg in ("state_noise", "image_gaussian"):
            if not getattr(self, arg) >= 0:
                raise ValueError(f"{arg}: expected a standard deviation >= 0, got {getattr(self, arg)}")
        for arg in ("image_noise", "instruction_noise", "image_occlusion"):
            p = getattr(self, arg)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{arg}: expected a fraction in [0, 1], got {p}")
        if not 0.0 <= self.image_jitter < 1.0:
            raise ValueError(f"image_jitter: expected a strength in [0, 1), got {self.image_jitter}")
        if isinstance(self.image_shift, bool) or int(self.image_shift) != self.image_shift or self.image_shift < 0:
            raise ValueError(f"image_shift: expected a whole number of pixels >= 0, got {self.image_shift}")
        object.__setattr__(self, "image_shift", int(self.image_shift))

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        parts = [f"no {m}" for m in self.remove]
        if self.state_noise:
            parts.append(f"state noise σ={self.state_noise:g}")
        if self.image_noise:
            parts.append(f"image cell noise p={self.image_noise:g}")
        if self.instruction_noise:
            parts.append(f"instruction noise p={self.instruction_noise:g}")
        if self.image_shift:
            parts.append(f"image shifted {self.image_shift} px")
        if self.image_jitter:
            parts.append(f"image colour jitter s={self.image_jitter:g}")
        if self.image_occlusion:
            parts.append(f"image occluded {100 * self.image_occlusion:g}%")
        if self.image_gaussian:
            parts.append(f"image Gaussian noise σ={self.image_gaussian:g}")
        return ", ".join(parts) if parts else "full input"

    @property
    def is_identity(self) -> bool:
        return not (self.remove or self.state_noise or self.image_noise or self.instruction_noise
                    or self.pixels_only)  # fmt: skip

    @property
    def pixels_only(self) -> bool:
        """Whether a corruption that needs RGB pixels (Gaussian noise, occlusion, jitter, shift) is on."""
        return bool(self.image_gaussian or self.image_occlusion or self.image_jitter or self.image_shift)

    @property
    def per_episode_view(self) -> bool:
        """Whether per-episode image draws (:meth:`frame_params`) are needed."""
        return bool(self.image_occlusion or self.image_jitter or self.image_shift) and "image" not in self.remove

    def frame_params(self, shape: tuple[int, ...], rng: np.random.Generator) -> Any:
        """The per-episode draws (occluder position, jitter factors, shift) for frames of ``shape``."""
        from vlafoundry.eval.image_corruptions import draw_frame_params

        return draw_frame_params(tuple(shape), rng, self.image_occlusion, self.image_jitter, self.image_shift)

    def corrupt_instruction(self, text: str, rng: np.random.Generator) -> tuple[str, bool]:
        """Per-episode instruction corruption -> (text, present)."""
        if "instruction" in self.remove:
            return "", False
        if self.instruction_noise > 0:
            words = text.split()
            flips = rng.random(len(words)) < self.instruction_noise
            picks = rng.integers(0, len(NOISE_WORDS), size=len(words))
            text = " ".join(NOISE_WORDS[p] if f else w for w, f, p in zip(words, flips, picks, strict=True))
        return text, True

    def corrupt_image(self, image: np.ndarray, rng: np.random.Generator, params: Any = None) -> np.ndarray:
        """One frame (``(H, W, C)`` or ``(K, H, W, C)``) under the image corruptions, same shape and dtype.

        ``params``: this episode's :meth:`frame_params` (drawn here from ``rng`` when None, i.e. per call).
        """
        from vlafoundry.eval import image_corruptions as ic

        if self.pixels_only:
            ic.check_pixels(image, "image")
        if self.per_episode_view and params is None:
            params = self.frame_params(image.shape, rng)
        if self.image_shift:
            image = ic.shift_view(image, params.shift)
        if self.image_jitter:
            image = ic.color_jitter(image, params.jitter)
        if self.image_occlusion and params.side:
            image = ic.occlude(image, params.corner, params.side)
        if self.image_gaussian:
            image = ic.gaussian_noise(image, self.image_gaussian, rng)
        if self.image_noise > 0:
            image = ic.cell_noise(image, self.image_noise, rng)
        return image

    def corrupt_step(
        self, image: np.ndarray | None, state: np.ndarray, rng: np.random.Generator, params: Any = None
    ) -> tuple[np.ndarray | None, np.ndarray, bool, bool]:
        """Per-step image/state corruption -> (image, state, image_present, state_present).

        ``params``: the episode's :meth:`frame_params` for the view corruptions (None: drawn per call).
        """
        image_present = image is not None
        if image is not None:
            if "image" in self.remove:
                image, image_present = np.zeros_like(image), False
            else:
                image = self.corrupt_image(image, rng, params)
        state_present = True
        if "state" in self.remove:
            state, state_present = np.zeros_like(state), False
        elif self.state_noise > 0:
            state = (state + rng.normal(0.0, self.state_noise, size=state.shape)).astype(state.dtype)
        return image, state, image_present, state_present
