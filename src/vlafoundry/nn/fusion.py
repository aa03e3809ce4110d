"""Vision-language(-action) fusion modules.

Fusion contract (EarlyFusion, LateFusion, VisionLanguageFusion, FiLMFusion)::

    forward(visual_features (B, Lv, D) | None, language_features (B, Ll, D) | None,
            visual_mask (B, Lv) bool | None = None, language_mask (B, Ll) bool | None = None,
            extra_tokens (B, Le, D) | None = None, extra_mask (B, Le) bool | None = None) -> (B, D)

:class:`EarlyFusion` and :class:`LateFusion` also take pooled features ``(B, D)`` for any modality, as the chapter's
versions do (mask ``(B,)``, True = present): a pooled vector is a sequence of one token, ``x[:, None]``.

A ``None`` modality is absent for the whole batch; a mask row that is all False (or a zero-length sequence) is
absent for that sample. Either way a learned placeholder token of that modality stands in, so the output is finite
and the module works with any subset of its inputs. ``extra_tokens`` carries further modalities (proprioceptive
state, past actions) already projected to the fusion width.

Where the modules live (all importable from here): the shared helpers (:func:`masked_mean_pool`, input checks,
placeholders) in :mod:`vlafoundry.nn.fusion_common`; :class:`VisionLanguageFusion` and :class:`FiLMFusion` in
:mod:`vlafoundry.nn.fusion_cross`; :class:`EarlyFusion` and :class:`LateFusion` in
:mod:`vlafoundry.nn.fusion_early_late`; :class:`MultimodalFusionNetwork` in :mod:`vlafoundry.nn.fusion_network`.
"""

from __future__ import annotations

from vlafoundry.nn.fusion_common import masked_mean_pool
from vlafoundry.nn.fusion_common import (  # noqa: F401 (re-exported)
    Seq,
    _batch_size,
    _blocks,
    _check_seq,
    _concat,
    _pooled_as_tokens,
    _token_inputs,
    _trunc_normal,
    _with_placeholder,
)
from vlafoundry.nn.fusion_cross import FiLMFusion, VisionLanguageFusion
from vlafoundry.nn.fusion_early_late import EarlyFusion, LateFusion, _ModalityEncoder  # noqa: F401 (re-exported)
from vlafoundry.nn.fusion_network import MultimodalFusionNetwork

__all__ = [
    "masked_mean_pool",
    "VisionLanguageFusion",
    "EarlyFusion",
    "LateFusion",
    "FiLMFusion",
    "MultimodalFusionNetwork",
]
