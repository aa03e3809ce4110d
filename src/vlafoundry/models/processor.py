"""The policy processor: raw batches and observations -> the tensors a policy's modules read.

Separate from the ``nn.Module`` (LeRobot's processor pipeline, in one class): it validates inputs (naming the key,
expected against found), moves them to the policy's device, flattens batches of whole episodes to their real
steps, standardises the state with the dataset statistics (:func:`vlafoundry.normalize.safe_std`, the rule the
datasets use), tokenises instructions (each distinct string once), and applies modality dropout in training
(:class:`vlafoundry.data.ModalityDropout`, the one implementation). Its state -- the :class:`PolicySpec` with the
normalisation statistics, and the tokenizer -- is saved as ``processor.json`` beside ``model.safetensors``.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn

from vlafoundry.data.transforms import ModalityDropout
from vlafoundry.models.spec import PolicySpec
from vlafoundry.nn._checks import check_tensor
from vlafoundry.nn.language import TextTokenizer
from vlafoundry.normalize import safe_std

MODALITIES = ("image", "instruction", "state")
_TOKEN_CACHE_LIMIT = 100_000


class PolicyProcessor:
    """Input processing for one policy (see the module docstring).

    Args:
        spec: the data's spaces and statistics.
        image / state: whether the policy reads images / the state vector (others are ignored, not required).
        tokenizer: for policies that tokenise instructions themselves (``model.language scratch``).
        modality_dropout: per-modality drop probabilities for training batches (``None``: none).
    """

    def __init__(self, spec: PolicySpec, *, image: bool = False, state: bool = False,
                 tokenizer: TextTokenizer | None = None, modality_dropout: Any = None) -> None:
        self.spec, self.image, self.state, self.tokenizer = spec, bool(image), bool(state), tokenizer
        md = modality_dropout
        self.dropout = ModalityDropout(md.image, md.instruction, md.state) if md is not None else ModalityDropout()
        s = spec.state_dim
        self._mean = torch.tensor(spec.state_mean if spec.state_mean is not None else [0.0] * s, dtype=torch.float32)
        self._std = torch.from_numpy(safe_std(spec.state_std if spec.state_std is not None else [1.0] * s))
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._token_cache: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        return {"spec": asdict(self.spec), "tokenizer": self.tokenizer.to_json() if self.tokenizer else None}

    @staticmethod
    def state_from_json(d: dict[str, Any], source: str = "processor.json") -> tuple[PolicySpec, TextTokenizer | None]:
        """(spec, tokenizer) from :meth:`to_json` output; a missing or malformed entry raises naming it."""
        if not isinstance(d, dict) or not isinstance(d.get("spec"), dict):
            raise ValueError(f"{source}: expected an object with a 'spec' entry, got {str(d)[:80]!r}")
        try:
            spec = PolicySpec(**d["spec"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: spec: {exc}") from None
        if spec.state_dim > 0 and (spec.state_mean is None or spec.state_std is None):
            raise ValueError(f"{source}: spec: missing normalisation statistics (state_mean/state_std) for "
                             f"state_dim={spec.state_dim}")
        tok = TextTokenizer.from_json(d["tokenizer"]) if d.get("tokenizer") else None
        return spec, tok

    # ------------------------------------------------------------------ state normalisation
    def normalize_state(self, state: torch.Tensor) -> torch.Tensor:
        """(..., S) raw state -> standardised with the dataset statistics (constant dimensions only centred)."""
        dev = state.device
        if dev not in self._on_device:
            self._on_device[dev] = (self._mean.to(dev), self._std.to(dev))
        mean, std = self._on_device[dev]
        return (state - mean) / std

    # ------------------------------------------------------------------ tokenisation
    def tokenize(self, instructions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Instruction strings -> ids (B, L) int64, mask (B, L) bool; each distinct string tokenised once."""
        if self.tokenizer is None:
            raise ValueError("tokenize: this policy has no tokenizer (model.language is not 'scratch')")
        tok, rows = self.tokenizer, []
        for s in instructions:
            ids = self._token_cache.get(s)
            if ids is None:
                ids = tok.encode([s])[0][0]
                ids = ids[ids != tok.pad_id] if ids.numel() > 1 else ids
                if len(self._token_cache) < _TOKEN_CACHE_LIMIT:
                    self._token_cache[s] = ids
            rows.append(ids)
        ids = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=tok.pad_id).to(device)
        return ids, ids != tok.pad_id

    # ------------------------------------------------------------------ batches
    def __call__(self, batch: dict[str, Any], device: torch.device, training: bool = False) -> dict[str, Any]:
        """A training/evaluation batch -> the prepared batch (validated, on ``device``, state standardised; with
        ``training``, modalities dropped at random).

        A batch of whole episodes (``seq_mask`` (B, L), from ``EpisodeDataset``) becomes a batch of its N real
        steps, with ``seq`` = (rows (N,), positions (N,), B, L) so a memory can put them back in order."""
        seq = None
        if batch.get("seq_mask") is not None:
            batch, seq = flatten_episodes(batch)
        out: dict[str, Any] = {"instruction": list(batch["instruction"]), "seq": None}
        if seq is not None:
            out["seq"] = (seq[0].to(device), seq[1].to(device), seq[2], seq[3])
        b = len(out["instruction"])
        if self.image:
            out["image"] = self._image(batch, b).to(device, non_blocking=True)
        if self.state:
            out["state"] = self.normalize_state(self._state(batch, b).to(device, non_blocking=True))
        t = out["image"].shape[1] if self.image else (out["state"].shape[1] if self.state else 1)
        obs_mask = batch.get("obs_mask")
        obs_mask = torch.ones(b, t, dtype=torch.bool) if obs_mask is None else torch.as_tensor(obs_mask).bool()
        if obs_mask.dim() == 1:
            obs_mask = obs_mask.unsqueeze(1)
        out["obs_mask"] = obs_mask.to(device)
        for m in MODALITIES:
            p = batch.get(f"{m}_present")
            if p is not None and tuple(np.shape(p)) != (b,):
                raise ValueError(f"{m}_present: expected shape ({b},), got {tuple(np.shape(p))}")
            p = torch.ones(b, dtype=torch.bool) if p is None else torch.as_tensor(p).bool().reshape(b)
            out[f"{m}_present"] = p.to(device)
        for k in ("action", "action_mask", "instruction_id", "task_id", "steps_left", "cell_labels",
                  "position_labels"):
            if k in batch and batch[k] is not None:
                out[k] = torch.as_tensor(batch[k]).to(device, non_blocking=True)
        if training and self.dropout.active:
            out = self.dropout(out)
        return out

    def _image(self, batch: dict[str, Any], b: int) -> torch.Tensor:
        img = batch.get("image")
        if img is None:
            raise ValueError("batch: expected key 'image' for a policy with a vision encoder")
        img = torch.as_tensor(img)
        frame_rank = len(self.spec.image_shape or (0, 0, 0))  # 3: (H, W, C); 4: (K, H, W, C) from K cameras
        if img.dim() == frame_rank + 1:
            img = img.unsqueeze(1)  # (B, 1, [K,] H, W, C)
        check_tensor("image", img, ndim=frame_rank + 2, floating=False)
        if img.shape[0] != b:
            raise ValueError(f"image: expected {b} rows (one per instruction), got shape {tuple(img.shape)}")
        if list(img.shape[2:]) != list(self.spec.image_shape or []):
            raise ValueError(f"image: expected frames of shape {tuple(self.spec.image_shape or ())}, "
                             f"got {tuple(img.shape[2:])}")
        return img  # (B, T, [K,] H, W, C)

    def _state(self, batch: dict[str, Any], b: int) -> torch.Tensor:
        if batch.get("state") is None:
            raise ValueError("batch: expected key 'state' for a policy that reads the state vector")
        st = torch.as_tensor(batch["state"], dtype=torch.float32)
        if st.dim() == 2:
            st = st.unsqueeze(1)  # (B, 1, S)
        check_tensor("state", st, ndim=3, last_dim=self.spec.state_dim, finite=True)
        if st.shape[0] != b:
            raise ValueError(f"state: expected {b} rows (one per instruction), got shape {tuple(st.shape)}")
        return st  # (B, T, S)

    # ------------------------------------------------------------------ acting
    def check_observation(self, observation: dict[str, Any]) -> int:
        """Validate a batched observation dict (ValueError naming the key); returns the batch size N."""
        instr = observation.get("instruction")
        if not isinstance(instr, (list, tuple)) or not all(isinstance(s, str) for s in instr):
            raise ValueError(f"instruction: expected a list of N strings, got {type(instr).__name__} {instr!r:.60}")
        n = len(instr)
        for key, needed in (("image", self.image), ("state", self.state)):
            if not needed:
                continue
            if key not in observation:
                raise ValueError(f"observation: expected key {key!r} for this policy (mark rows where it is missing "
                                 f"with {key}_present=False instead of leaving it out)")
            shape = tuple(np.shape(observation[key]))
            if not shape or shape[0] != n:
                raise ValueError(f"{key}: expected {n} rows (one per instruction), got shape {shape}")
        for m in MODALITIES:
            shape = tuple(np.shape(observation.get(f"{m}_present", np.zeros(n))))
            if shape != (n,):
                raise ValueError(f"{m}_present: expected shape ({n},), got {shape}")
        return n


def flatten_episodes(batch: dict[str, Any]) -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor, int, int]]:
    """Episode batch (B, L, ...) -> step batch (N, ...) of the real steps, and (rows, positions, B, L)."""
    mask = torch.as_tensor(batch["seq_mask"]).bool()
    check_tensor("seq_mask", mask, ndim=2, floating=False)
    b, l = mask.shape
    if len(batch["instruction"]) != b:
        raise ValueError(f"instruction: expected {b} episodes (seq_mask has {b} rows), got {len(batch['instruction'])}")
    rows, pos = mask.nonzero(as_tuple=True)  # (N,), row-major: each episode's steps in order
    out: dict[str, Any] = {"instruction": [batch["instruction"][i] for i in rows.tolist()]}
    for k, v in batch.items():
        if k in ("instruction", "seq_mask", "obs_mask") or v is None or not isinstance(v, (torch.Tensor, np.ndarray)):
            continue
        v = torch.as_tensor(v)
        if v.dim() >= 2 and tuple(v.shape[:2]) == (b, l):
            out[k] = v.to(rows.device)[rows, pos]  # (N, ...) per step
        elif v.dim() >= 1 and v.shape[0] == b:
            out[k] = v.to(rows.device)[rows]  # per episode -> per step
    return out, (rows, pos, b, l)


def present_flags(observation: dict[str, Any], rows: list[int] | None = None) -> dict[str, np.ndarray]:
    """The ``<modality>_present`` entries of an observation (optionally of some rows)."""
    out = {}
    for m in MODALITIES:
        if f"{m}_present" in observation:
            v = np.asarray(observation[f"{m}_present"])
            out[f"{m}_present"] = v if rows is None else v[rows]
    return out


__all__ = ["MODALITIES", "PolicyProcessor", "flatten_episodes", "present_flags"]
