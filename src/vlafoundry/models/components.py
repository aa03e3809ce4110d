"""Registries of the parts a VLA policy is composed from: fusion modules and action heads.

A new fusion is one builder ``(cfg, ffn_layer) -> module`` registered in :data:`FUSIONS`; a new action head is one
:class:`ActionHead` subclass registered in :data:`HEADS`. ``model.fusion`` / ``model.head`` in the config pick them
by name; :class:`~vlafoundry.models.vla.VLAPolicy` has no per-kind branches.

Every fusion module reads ``(vision (B, Nv, D) | None, lang (B, L, D) | None, vision_mask, lang_mask,
extra_tokens (B, Ns, D) | None, extra_mask)`` and returns (B, D).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vlafoundry.nn.action import ActionDecoder, ActionTokenizer
from vlafoundry.nn.fusion import EarlyFusion, FiLMFusion, LateFusion, VisionLanguageFusion
from vlafoundry.registry import Registry

FusionBuilder = Callable[[Any, Any], nn.Module]
FUSIONS: Registry[FusionBuilder] = Registry("model.fusion")


@FUSIONS.register("cross_attention")
def _cross_attention(cfg: Any, ffn: Any) -> nn.Module:
    d = cfg.d_model
    return VisionLanguageFusion(d, d, d, num_layers=cfg.num_layers, num_heads=cfg.num_heads, d_ff=cfg.d_ff,
                                dropout=cfg.dropout, ffn_layer=ffn)


@FUSIONS.register("early")
def _early(cfg: Any, ffn: Any) -> nn.Module:
    return EarlyFusion(cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads, d_ff=cfg.d_ff,
                       dropout=cfg.dropout, ffn_layer=ffn)


@FUSIONS.register("late")
def _late(cfg: Any, ffn: Any) -> nn.Module:
    return LateFusion(cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads, d_ff=cfg.d_ff,
                      dropout=cfg.dropout, ffn_layer=ffn)


@FUSIONS.register("film")
def _film(cfg: Any, ffn: Any) -> nn.Module:
    return FiLMFusion(cfg.d_model, num_layers=cfg.num_layers, dropout=cfg.dropout)


# ---------------------------------------------------------------------------------------------- action heads
class ActionHead(nn.Module):
    """Fused features (B, D) -> head outputs for a chunk of K actions, their loss, and actions.

    Subclasses set :attr:`action_type` (the action space they need) and implement :meth:`forward`,
    :meth:`entry_loss`, :meth:`entry_scores` and :meth:`pick`. Action tensors are (B, K) int64 for discrete spaces
    and (B, K, A) float for continuous ones."""

    action_type: ClassVar[str] = "continuous"
    #: Whether :meth:`pick` can sample (discrete and binned heads draw from a softmax).
    samples: ClassVar[bool] = False

    def __init__(self, d_model: int, spec: Any, cfg: Any) -> None:
        super().__init__()
        if spec.action_type != self.action_type:
            other = [n for n in HEADS.names() if HEADS.get(n).action_type == spec.action_type]
            raise ValueError(f"model.head: {type(self).kind!r} needs a {self.action_type} action space, the data's is "
                             f"{spec.action_type}; use one of {other}")
        self.chunk, self.action_dim = int(cfg.chunk), int(spec.action_dim)

    kind: ClassVar[str] = ""

    def entry_loss(self, out: torch.Tensor, action: torch.Tensor, loss_cfg: Any) -> torch.Tensor:
        """(B, K) loss of every action entry (unreduced)."""
        raise NotImplementedError

    def entry_scores(self, out: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Per entry (B, K): whether the greedy action is the expert's (``None`` for continuous heads) and the mean
        absolute error over action dimensions (0/1 mismatch for discrete heads)."""
        raise NotImplementedError

    def pick(self, out: torch.Tensor, sample: bool, temperature: float, generator: torch.Generator) -> torch.Tensor:
        """Head outputs -> actions (B, K) | (B, K, A)."""
        raise NotImplementedError


HEADS: Registry[type[ActionHead]] = Registry("model.head")


def register_head(name: str) -> Callable[[type[ActionHead]], type[ActionHead]]:
    def add(cls: type[ActionHead]) -> type[ActionHead]:
        cls.kind = name
        return HEADS.register(name)(cls)

    return add


def _sample_or_argmax(logits: torch.Tensor, sample: bool, temperature: float,
                      generator: torch.Generator) -> torch.Tensor:
    """(..., C) logits -> (...) indices: argmax, or drawn from softmax(logits / T) with ``generator`` (on CPU)."""
    if not sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1]).cpu()
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1]).to(logits.device)


@register_head("discrete")
class DiscreteHead(ActionHead):
    """Logits over ``num_actions`` for each of the K chunk steps: (B, K, n_actions); cross-entropy."""

    action_type = "discrete"
    samples = True

    def __init__(self, d_model: int, spec: Any, cfg: Any) -> None:
        super().__init__(d_model, spec, cfg)
        self.num_actions = int(spec.num_actions)
        self.net = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(),
                                 nn.Linear(d_model, self.chunk * self.num_actions))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused).view(fused.shape[0], self.chunk, self.num_actions)  # (B, K, n_actions)

    def entry_loss(self, out: torch.Tensor, action: torch.Tensor, loss_cfg: Any) -> torch.Tensor:
        ce = F.cross_entropy(out.flatten(0, 1), action.long().flatten(), reduction="none",
                             label_smoothing=loss_cfg.label_smoothing)
        return ce.view(action.shape)  # (B, K)

    def entry_scores(self, out: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        correct = out.argmax(-1) == action.long()  # (B, K)
        return correct, (~correct).float()

    def pick(self, out: torch.Tensor, sample: bool, temperature: float, generator: torch.Generator) -> torch.Tensor:
        return _sample_or_argmax(out, sample, temperature, generator)  # (B, K)


@register_head("continuous")
class ContinuousHead(ActionHead):
    """The chapter's :class:`~vlafoundry.nn.ActionDecoder`: bounded regression of K actions (B, K, A); L1 / MSE."""

    def __init__(self, d_model: int, spec: Any, cfg: Any) -> None:
        super().__init__(d_model, spec, cfg)
        a = self.action_dim
        self.decoder = ActionDecoder(d_model, a, chunk_size=self.chunk, low=spec.action_low or [-1.0] * a,
                                     high=spec.action_high or [1.0] * a)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.decoder(fused).view(fused.shape[0], self.chunk, self.action_dim)  # (B, K, A)

    def entry_loss(self, out: torch.Tensor, action: torch.Tensor, loss_cfg: Any) -> torch.Tensor:
        diff = out - action.float()
        return (diff.abs() if loss_cfg.continuous == "l1" else diff**2).mean(-1)  # (B, K)

    def entry_scores(self, out: torch.Tensor, action: torch.Tensor) -> tuple[None, torch.Tensor]:
        return None, (out - action.float()).abs().mean(-1)

    def pick(self, out: torch.Tensor, sample: bool, temperature: float, generator: torch.Generator) -> torch.Tensor:
        return out


@register_head("binned")
class BinnedHead(ActionHead):
    """Each action dimension as ``num_bins`` classes (:class:`~vlafoundry.nn.ActionTokenizer`): (B, K, A, bins)."""

    samples = True

    def __init__(self, d_model: int, spec: Any, cfg: Any) -> None:
        super().__init__(d_model, spec, cfg)
        a, self.num_bins = self.action_dim, int(cfg.num_bins)
        self.tokenizer = ActionTokenizer(self.num_bins, low=spec.action_low or [-1.0] * a,
                                         high=spec.action_high or [1.0] * a, action_dim=a)
        self.net = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(),
                                 nn.Linear(d_model, self.chunk * a * self.num_bins))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused).view(fused.shape[0], self.chunk, self.action_dim, self.num_bins)  # (B, K, A, bins)

    def entry_loss(self, out: torch.Tensor, action: torch.Tensor, loss_cfg: Any) -> torch.Tensor:
        bins = self.tokenizer.encode(action.float()).to(out.device)  # (B, K, A)
        ce = F.cross_entropy(out.flatten(0, 2), bins.flatten(), reduction="none")
        return ce.view(bins.shape).mean(-1)  # (B, K)

    def entry_scores(self, out: torch.Tensor, action: torch.Tensor) -> tuple[None, torch.Tensor]:
        pred = self.tokenizer.decode(out.argmax(-1)).to(out.device)
        return None, (pred - action.float()).abs().mean(-1)

    def pick(self, out: torch.Tensor, sample: bool, temperature: float, generator: torch.Generator) -> torch.Tensor:
        return self.tokenizer.decode(_sample_or_argmax(out, sample, temperature, generator)).to(out.device)


def resolve_head(name: str, action_type: str) -> str:
    """``auto`` -> the default head of the action space (``discrete`` or ``continuous``); other names unchanged."""
    if name != "auto":
        return name
    return "discrete" if action_type == "discrete" else "continuous"


# the generative heads (flow matching, diffusion) register themselves in their own module
from vlafoundry.models import generative as _generative  # noqa: F401  (after HEADS: it imports from here)

__all__ = ["FUSIONS", "HEADS", "ActionHead", "BinnedHead", "ContinuousHead", "DiscreteHead", "register_head",
           "resolve_head"]
