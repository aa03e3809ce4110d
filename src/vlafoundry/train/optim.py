"""The optimiser and its learning-rate schedule: AdamW with weight decay on matrices only, linear warm-up then
cosine decay. Importable from :mod:`vlafoundry.train.trainer` as before.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from vlafoundry.train.config import OptimConfig


def lr_factor(step: int, opt: OptimConfig) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_lr_ratio`` at ``opt.steps``."""
    if opt.warmup_steps > 0 and step < opt.warmup_steps:
        return (step + 1) / opt.warmup_steps
    span = max(1, opt.steps - opt.warmup_steps)
    progress = min(1.0, (step - opt.warmup_steps) / span)
    return opt.min_lr_ratio + (1 - opt.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, opt: OptimConfig) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only (no decay on biases, norms, embeddings' 1-D params)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=opt.lr, betas=tuple(opt.betas))
