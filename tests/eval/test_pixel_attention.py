"""Attention maps over a pixel policy's patch tokens (CLS per camera left out), as the report draws them."""

import numpy as np
import torch

from tests.models.test_pixels import make, pixel_spec
from vlafoundry.eval.visuals import _attention_for


def test_attention_map_over_the_first_cameras_patches():
    for cams in (1, 2):
        p = make(pixel_spec(cams, size=16), fusion="cross_attention").eval()
        shape = p.spec.image_shape
        o = {"image": np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8),
             "state": np.zeros(4, np.float32), "instruction": "open the drawer"}
        modules = [m for m in p.modules() if hasattr(m, "record_attention")]
        amap = _attention_for(p, o, modules, torch)
        assert amap is not None and amap.shape == (2, 2)  # 16 px / patch 8
        assert np.all(amap >= 0) and amap.sum() <= 1.0 + 1e-5
