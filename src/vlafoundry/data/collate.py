"""Batching for demonstration samples."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def collate(items: Sequence[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
    """Stack a list of sample dicts into a batch dict (tensors stacked, strings kept as a list).

    An already-collated batch (what ``DemoDataset.__getitems__`` returns, and therefore what a
    ``DataLoader`` hands to its ``collate_fn``) is passed through unchanged.
    """
    if isinstance(items, dict):
        return items
    if len(items) == 0:
        raise ValueError("collate: expected at least one item, got an empty list")
    batch: dict[str, Any] = {}
    for key, first in items[0].items():
        values = [item[key] for item in items]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, (bool, int, float)):
            batch[key] = torch.as_tensor(values)
        else:
            batch[key] = list(values)
    return batch


def unbatch(batch: dict[str, Any], j: int) -> dict[str, Any]:
    """Item ``j`` of a batch dict."""
    return {k: v[j] for k, v in batch.items()}
