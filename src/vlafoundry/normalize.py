"""The one rule for standardising with dataset statistics, shared by datasets and policy processors."""

from __future__ import annotations

from typing import Any

import numpy as np

#: A standard deviation below this is treated as a constant dimension.
STD_FLOOR = 1e-6


def safe_std(std: Any) -> np.ndarray:
    """Standard deviations with every value below :data:`STD_FLOOR` replaced by 1.0 (float32).

    A dimension that was constant in the data (e.g. Meta-World's unused object slots) is then only centred: if it
    ever moves when acting, it moves by its raw amount instead of being scaled by 1/STD_FLOOR."""
    std = np.asarray(std, dtype=np.float64)
    return np.where(std < STD_FLOOR, 1.0, std).astype(np.float32)


__all__ = ["STD_FLOOR", "safe_std"]
