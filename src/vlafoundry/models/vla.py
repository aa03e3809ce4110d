"""VLAPolicy: a vision-language-action policy composed only of ``vlafoundry.nn`` parts (``model.type: vla``).

Data flow for one training batch (B samples, T history frames, K-step action chunks)::

    image (B,T,H,W,C) uint8 ──SymbolicGridEncoder / VisionEncoder──► (B*T, N, D) ──vision context──► (B, T*N, D)
    state (B,T,S)            ──standardised (processor), MLP────────► (B, T, D)       (extra tokens)
    instruction list[str]    ──TextTokenizer+TextProcessingModule / LanguageEncoder──► (B, L, D)
                             ──fusion (components.FUSIONS[model.fusion])────────────► (B, D)
                             ──[model.memory gru: GRU over the episode's steps]──────► (B, D)
                             ──action head (components.HEADS[model.head])────────────► loss / actions

The module is split by concern: this file builds the network and runs it (``encode`` -> ``features`` ->
``action_outputs``); :mod:`vlafoundry.models.objectives` holds the training objectives (``forward``);
:mod:`vlafoundry.models.acting` the acting state (history window, action queues, memory, sampling RNG);
:class:`~vlafoundry.models.processor.PolicyProcessor` the input processing.

Missing modalities: every sample carries ``image_present`` / ``instruction_present`` / ``state_present``; a
missing modality's tokens are masked out and the fusion module substitutes its learned placeholder. Training
drops modalities at random (``model.modality_dropout``) so the policy acts with any subset of its inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from vlafoundry.models.acting import ActingState
from vlafoundry.models.base import Policy
from vlafoundry.models.components import FUSIONS, HEADS, resolve_head
from vlafoundry.models.config import PolicyConfig
from vlafoundry.models.grounding import InstructionSnap
from vlafoundry.models.objectives import LossConfig, VLAObjectives
from vlafoundry.models.processor import PolicyProcessor
from vlafoundry.models.registry import register_policy
from vlafoundry.models.spec import PolicySpec
from vlafoundry.nn.augment import random_shift
from vlafoundry.nn.blocks import TransformerEncoderBlock
from vlafoundry.nn.features import FourierFeatures
from vlafoundry.nn.fusion import masked_mean_pool
from vlafoundry.nn.language import LanguageEncoder, TextProcessingModule, TextTokenizer
from vlafoundry.nn.losses import ContrastiveLoss, MultimodalPretrainingTask
from vlafoundry.nn.matching import AttributeMatching
from vlafoundry.nn.moe import MultimodalMixtureOfExperts
from vlafoundry.nn.vision import (
    CELL_LABEL_CLASSES,
    POSITION_LABEL_DIMS,
    SymbolicGridEncoder,
    VisionEncoder,
    get_1d_sincos_pos_embed,
)


def _moe_factory(cfg: PolicyConfig):
    if not cfg.moe:
        return None

    def make(d_model: int, d_ff: int, dropout: float) -> nn.Module:
        return MultimodalMixtureOfExperts(cfg.num_experts, d_model, top_k=cfg.moe_top_k,
                                          capacity_factor=cfg.moe_capacity_factor, d_ff=d_ff, dropout=dropout)

    return make


@register_policy("vla")
class VLAPolicy(VLAObjectives, Policy):
    """LeRobot-style policy: ``forward(batch) -> (loss, metrics)``, ``select_action(obs)``, ``reset()``."""

    config_class = PolicyConfig

    def __init__(self, cfg: PolicyConfig, spec: PolicySpec, tokenizer: TextTokenizer | None = None,
                 temperature: float = 0.07, learnable_temperature: bool = True) -> None:
        has_image = cfg.vision != "none" and spec.image_shape is not None
        has_state = cfg.use_state and spec.state_dim > 0
        if cfg.language == "scratch" and tokenizer is None:
            raise ValueError("model.language=scratch needs a TextTokenizer (train one on the instructions)")
        processor = PolicyProcessor(spec, image=has_image, state=has_state,
                                    tokenizer=tokenizer if cfg.language == "scratch" else None,
                                    modality_dropout=cfg.modality_dropout)
        super().__init__(cfg, processor)
        d = cfg.d_model
        ffn = _moe_factory(cfg)
        self.has_image, self.has_state, self.has_language = has_image, has_state, cfg.language != "none"
        self.tokenizer = processor.tokenizer

        # ---- vision
        self.vision_encoder: nn.Module | None = None
        if self.has_image:
            if len(spec.image_shape) not in (3, 4):
                raise ValueError(f"image data: expected frames (H, W, C) or (K, H, W, C) from K cameras, got shape "
                                 f"{tuple(spec.image_shape)}")
            cams = 1 if len(spec.image_shape) == 3 else int(spec.image_shape[0])
            h, w, c = spec.image_shape[-3:]
            if cfg.vision == "grid":
                if c != 3 or cams != 1:
                    raise ValueError(f"model.vision=grid needs BabyAI's symbolic (H, W, 3) view, got image shape "
                                     f"{tuple(spec.image_shape)}; use model.vision=patch for RGB")
                self.vision_encoder = SymbolicGridEncoder(d, cls_token=False)
                self.num_image_tokens = h * w
            else:
                self.vision_encoder = VisionEncoder(c, cfg.patch_size, d, stem=cfg.vision_stem, num_cameras=cams,
                                                    norm_layer=nn.LayerNorm if cfg.patch_norm else None)
                self.num_image_tokens = self.vision_encoder.num_tokens(h, w)
            self.vision_context = nn.ModuleList(
                TransformerEncoderBlock(d, cfg.num_heads, cfg.d_ff, cfg.dropout, ffn_layer=ffn)
                for _ in range(cfg.vision_layers)
            )
            self.mrm_mask_token = nn.Parameter(torch.zeros(1, 1, d))
            nn.init.normal_(self.mrm_mask_token, std=0.02)
        # ---- per-cell labels from the patch tokens (model.cell_labels, loss.cells): training only
        self.cell_head: nn.Linear | None = None
        if cfg.cell_labels != "none" and self.has_image:
            if len(spec.image_shape) != 3:
                raise ValueError(f"model.cell_labels={cfg.cell_labels!r} needs one camera's (H, W, C) frames, got "
                                 f"image shape {tuple(spec.image_shape)}")
            self.cell_head = nn.Linear(d, sum(CELL_LABEL_CLASSES[cfg.cell_labels]))
            # model.cell_tokens: an embedding table per labelled attribute, read with the predicted distributions
            self.cell_embed = nn.ParameterList(
                nn.Parameter(torch.randn(n, d) * 3.0**-0.5) for n in CELL_LABEL_CLASSES[cfg.cell_labels]
            ) if cfg.cell_tokens != "none" else None
        # ---- object and goal positions from the vision CLS token (model.position_labels, loss.positions)
        self.position_head: nn.Module | None = None
        self.position_proj: nn.Module | None = None
        if cfg.position_labels != "none" and self.has_image:
            p = POSITION_LABEL_DIMS[cfg.position_labels]
            dc = d * (1 if len(spec.image_shape) == 3 else int(spec.image_shape[0]))  # every camera's CLS token
            self.position_head = nn.Sequential(nn.LayerNorm(dc), nn.Linear(dc, d), nn.GELU(), nn.Linear(d, p))
            if cfg.position_tokens != "none" and has_state:
                # model.position_tokens: the predicted positions join the state token, as the state policy's do
                self.position_features = FourierFeatures(p, cfg.state_fourier)
                self.position_proj = nn.Sequential(nn.Linear(self.position_features.out_features, d), nn.GELU(),
                                                   nn.Linear(d, d))
        # temporal positions for history frames (fixed sin-cos, index 0 = oldest frame)
        temporal = torch.from_numpy(get_1d_sincos_pos_embed(d, np.arange(cfg.history))).float()
        self.register_buffer("temporal_pos", temporal, persistent=False)  # (T, D)

        # ---- state (standardised by the processor)
        if self.has_state:
            self.state_features = FourierFeatures(spec.state_dim, cfg.state_fourier)  # identity when 0 octaves
            self.state_proj = nn.Sequential(nn.Linear(self.state_features.out_features, d), nn.GELU(), nn.Linear(d, d))

        # ---- language
        self.text_encoder: nn.Module | None = None
        if cfg.language == "scratch":
            self.text_encoder = TextProcessingModule(tokenizer.vocab_size, d, max_seq_len=128, dropout=cfg.dropout,
                                                     num_layers=cfg.text_layers, num_heads=cfg.num_heads,
                                                     d_ff=cfg.d_ff)
        elif cfg.language == "pretrained":
            self.text_encoder = LanguageEncoder(cfg.pretrained_model, d_model=d, freeze=True,
                                                adapter=cfg.language_adapter)

        # ---- instruction-to-cell matching, one attribute at a time (model.grounding)
        self.grounding: AttributeMatching | None = None
        if cfg.grounding == "attributes" and self.has_image and self.has_language:
            self.grounding = AttributeMatching(d, num_attributes=2, readout=cfg.grounding_readout)

        # ---- fusion, memory (a GRU over the episode's fused step features: residual, then LayerNorm), head
        self.fusion = FUSIONS.get(cfg.fusion)(cfg, ffn)
        self.memory: nn.GRU | None = None
        if cfg.memory == "gru":
            self.memory = nn.GRU(d, d, batch_first=True)
            self.memory_norm = nn.LayerNorm(d)
        self.head_kind = resolve_head(cfg.head, spec.action_type)
        self.action_head = HEADS.get(self.head_kind)(d, spec, cfg)

        # ---- alignment pretraining heads (the chapter's objectives)
        self.obs_embed = nn.Linear(d, cfg.embed_dim)
        self.instr_embed = nn.Linear(d, cfg.embed_dim)
        self._temperature, self._learnable_temperature = float(temperature), bool(learnable_temperature)
        self.contrastive = ContrastiveLoss(temperature=temperature, learnable_scale=learnable_temperature)
        vocab = tokenizer.vocab_size if tokenizer is not None else 2
        self.pretrain_heads = MultimodalPretrainingTask(d, vocab_size=vocab, patch_dim=d)
        self.acting = ActingState(self)

    # ------------------------------------------------------------------ construction and persistence
    @classmethod
    def from_dataset(cls, cfg: PolicyConfig, dataset: Any, loss_cfg: Any = None) -> VLAPolicy:
        """Build for a dataset: its spaces and statistics, and a tokenizer trained on its instructions."""
        lc = loss_cfg or LossConfig()
        tok = None
        if cfg.language == "scratch":
            tok = TextTokenizer.train(list(dataset.instructions), kind=cfg.tokenizer, vocab_size=cfg.tokenizer_vocab)
        return cls(cfg, PolicySpec.from_dataset(dataset), tok, lc.temperature, lc.learnable_temperature)

    @classmethod
    def from_state(cls, cfg: PolicyConfig, spec: PolicySpec, tokenizer: Any, state: dict[str, Any]) -> VLAPolicy:
        return cls(cfg, spec, tokenizer, float(state.get("temperature", 0.07)),
                   bool(state.get("learnable_temperature", True)))

    def policy_state(self) -> dict[str, Any]:
        return {"temperature": self._temperature, "learnable_temperature": self._learnable_temperature}

    def compilable_modules(self) -> list[nn.Module]:
        mods: list[nn.Module] = [self.fusion, self.action_head]
        if self.has_image:
            mods += [self.vision_encoder, *self.vision_context]
        if self.cfg.language == "scratch":
            mods.append(self.text_encoder)
        return mods

    def check_objectives(self, loss_cfg: Any) -> None:
        lc = loss_cfg
        if lc.mlm > 0 and self.cfg.language != "scratch":
            raise ValueError("loss.mlm > 0 needs model.language=scratch (the pretrained encoder is frozen)")
        if lc.mrm > 0 and not self.has_image:
            raise ValueError("loss.mrm > 0 needs an image modality (model.vision != none and image data)")
        if lc.mrm > 0 and self.cfg.vision_layers < 1:
            raise ValueError("loss.mrm > 0 needs model.vision_layers >= 1: masked cells are reconstructed from "
                             f"their context, and with vision_layers={self.cfg.vision_layers} there is none")
        if lc.grounding > 0 and self.grounding is None:
            raise ValueError("loss.grounding > 0 needs model.grounding=attributes (with model.vision=grid and a "
                             f"language modality), got model.grounding={self.cfg.grounding!r}")
        if lc.positions > 0 and self.position_head is None:
            raise ValueError("loss.positions > 0 needs model.position_labels (e.g. 'metaworld', with model.vision=patch "
                             f"and image data), got model.position_labels={self.cfg.position_labels!r}")
        if lc.cells > 0 and self.cell_head is None:
            raise ValueError("loss.cells > 0 needs model.cell_labels (e.g. 'minigrid', with model.vision=patch and "
                             f"image data), got model.cell_labels={self.cfg.cell_labels!r}")
        if (lc.contrastive > 0 or lc.itm > 0) and not self.has_language:
            raise ValueError("loss.contrastive/itm > 0 need a language modality (model.language != none)")

    @property
    def device(self) -> torch.device:
        return self.obs_embed.weight.device

    @property
    def action_tokenizer(self) -> Any:
        """The binned head's :class:`~vlafoundry.nn.ActionTokenizer` (``None`` for other heads)."""
        return getattr(self.action_head, "tokenizer", None)

    @property
    def stateless(self) -> bool:
        """Whether a row's action depends only on that row's current observation (no history, chunks or memory)."""
        return self.cfg.history == 1 and self.cfg.chunk == 1 and self.memory is None

    # ------------------------------------------------------------------ encoders
    def encode_image(self, image: torch.Tensor, frame_mask: torch.Tensor, mrm: bool = False,
                     instruction: tuple[torch.Tensor, torch.Tensor] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(B,T,[K,]H,W,C) uint8 -> tokens (B, T*N, D), mask (B, T*N), extras: ``positions`` (1, T*N, D), the
        fixed position terms (spatial, camera, temporal) the tokens carry, and with ``mrm`` the MRM targets.
        ``instruction`` (pooled (B, D), present (B,) bool), with ``model.grounding``: the instruction whose
        per-attribute match with each cell is added to the cell's token (``extras["grounding"]`` (B, T*N, D));
        absent instructions add nothing."""
        b, t = image.shape[:2]
        if self.training and self.cfg.image_shift > 0:
            # one offset per sample and camera, shared by the sample's T frames: (B, T, [K,] H, W, C)
            image = random_shift(image, self.cfg.image_shift, independent=1 if image.ndim == 6 else 0)
        flat = image.reshape(b * t, *image.shape[2:])  # (B*T, [K,] H, W, C)
        tokens = self.vision_encoder(flat)  # (B*T, N, D); uint8 RGB is read channels-last by VisionEncoder
        n = tokens.shape[1]
        extras: dict[str, torch.Tensor] = {"vision_tokens": tokens}  # the encoder's own tokens (loss.cells)
        if self.cell_head is not None and self.cfg.cell_tokens != "none":
            tokens, extras["cell_logits"] = self.cell_tokens(tokens, image)
        if mrm:
            patch_mask = self.pretrain_heads.mask_patches(b * t, n, 0.15, device=tokens.device)  # (B*T, N)
            pos = self.image_positions(image, tokens).expand(b * t, -1, -1)  # (B*T, N, D)
            extras["mrm_target"] = tokens.detach()
            extras["mrm_mask"] = patch_mask
            tokens = torch.where(patch_mask.unsqueeze(-1), self.mrm_mask_token + pos, tokens)
        mask = frame_mask.reshape(b * t, 1).expand(b * t, n)  # (B*T, N)
        for blk in self.vision_context:
            tokens = blk(tokens, mask)
        if mrm:
            extras["mrm_pred"] = tokens
        if self.position_head is not None:  # each camera's CLS after the context layers, side by side
            cams = 1 if image.ndim == 5 else image.shape[2]
            extras["vision_cls"] = tokens.reshape(b, t, cams, n // cams, -1)[:, :, :, 0].reshape(b, t, -1)  # (B,T,K*D)
        if self.grounding is not None and instruction is not None:
            # after the context layers, so the grounding reaches the fusion only and pooled_observation removes it
            g, scores, cells = self.match_cells(flat, *instruction)  # (B*T, N, D), (B*T, N, A), (B*T, H*W, 2)
            tokens = tokens + g
            extras["grounding"] = g.reshape(b, t * n, -1)  # (B, T*N, D)
            extras.update(grounding_scores=scores, grounding_cells=cells)  # for loss.grounding
        temporal = self.temporal_pos[-t:].view(1, t, 1, -1)  # (1, T, 1, D)
        tokens = tokens.reshape(b, t, n, -1) + temporal  # (B, T, N, D)
        extras["positions"] = (self.image_positions(image, tokens).unsqueeze(1) + temporal).reshape(1, t * n, -1)
        return tokens.reshape(b, t * n, -1), mask.reshape(b, t * n), extras

    def cell_tokens(self, tokens: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``model.cell_tokens``: patch tokens (B*T, 1+N, D) (CLS first) -> the tokens with each cell's predicted
        labels embedded (``sum_a softmax(logits_a) @ E_a`` plus the cell's position; in place of the patch token
        with ``replace``, added to it with ``add``), and the cell head's logits (B*T, N, sum(classes))."""
        logits = self.cell_head(tokens[:, 1:])  # (B*T, N, sum C_a)
        classes = CELL_LABEL_CLASSES[self.cfg.cell_labels]
        cells = sum(part.softmax(-1) @ table.to(part.dtype)
                    for part, table in zip(logits.split(list(classes), dim=-1), self.cell_embed))  # (B*T, N, D)
        if self.cfg.cell_tokens == "replace":
            cells = cells + self.image_positions(image, tokens)[:, 1:]  # (B*T, N, D)
        else:
            cells = tokens[:, 1:] + cells
        return torch.cat([tokens[:, :1], cells], dim=1), logits  # (B*T, 1+N, D)

    def match_cells(self, grid: torch.Tensor, instruction: torch.Tensor, present: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Symbolic frames (B*T, H, W, 3), pooled instructions (B, D) and their presence (B,) -> the grounding
        features (B*T, N, D) added to the cell tokens (zeros where the instruction is absent), the raw
        per-attribute match scores (B*T, N, A) (zero at a CLS slot) and the cells' (object, colour) indices
        (B*T, H*W, 2)."""
        t = grid.shape[0] // instruction.shape[0]
        instruction = instruction.repeat_interleave(t, dim=0)  # (B*T, D)
        enc = self.vision_encoder
        idx = enc.attribute_indices(grid)  # (B*T, H*W, 2)
        scores = self.grounding.indexed_scores(instruction, enc.attribute_tables(), idx)  # (B*T, H*W, A)
        if enc.cls_token is not None:
            scores = torch.cat([scores.new_zeros(scores.shape[0], 1, scores.shape[2]), scores], dim=1)
        feats = self.grounding.readout_features(scores)  # (B*T, N, D)
        return feats * present.repeat_interleave(t, dim=0).view(-1, 1, 1).to(feats.dtype), scores, idx

    def grid_hw(self, image: torch.Tensor) -> tuple[int, int]:
        """Token grid (rows, cols) of one camera's (B, T, [K,] H, W, C) frames: the cells, or the ViT's patches."""
        h, w = image.shape[-3], image.shape[-2]
        if self.cfg.vision == "grid":
            return h, w
        return self.vision_encoder.grid_size(h, w)

    def position_state(self, enc: dict[str, Any], b: dict[str, Any]) -> torch.Tensor:
        """``model.position_tokens add``: the positions the head reads from each frame (B, T, P), kept in
        ``extras["position_pred"]``, embedded as a state term (B, T, D); zero where the frame is absent."""
        pred = self.position_head(enc["extras"]["vision_cls"])  # (B, T, P)
        enc["extras"]["position_pred"] = pred
        present = (b["obs_mask"] & b["image_present"].unsqueeze(1)).unsqueeze(-1)  # (B, T, 1)
        return self.position_proj(self.position_features(pred)) * present.to(pred.dtype)

    def image_positions(self, image: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(1, N, D): the fixed positions (and camera embeddings) the vision encoder added to its N tokens."""
        if self.cfg.vision == "grid":
            return self.vision_encoder.pos_cache.get(*self.grid_hw(image), tokens.device, tokens.dtype)
        return self.vision_encoder.positions(image.shape[-3], image.shape[-2], tokens.device, tokens.dtype)

    def encode_state(self, state: torch.Tensor) -> torch.Tensor:
        """(B,T,S) standardised state -> (B,T,D) tokens."""
        return self.state_proj(self.state_features(state)) + self.temporal_pos[-state.shape[1]:].unsqueeze(0)

    def tokenize(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Instruction strings -> ids (B, L) int64, mask (B, L) bool (the processor's tokenizer)."""
        return self.processor.tokenize(list(instructions), self.device)

    @property
    def instruction_snap(self) -> InstructionSnap:
        """The :class:`~vlafoundry.models.grounding.InstructionSnap` over this policy's training instructions."""
        if getattr(self, "_snap", None) is None:
            self._snap = InstructionSnap(self.spec.instructions, self.text_encoder)
        return self._snap

    def encode_language(self, instructions: list[str], ids: torch.Tensor | None = None,
                        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.language == "pretrained":
            if self.cfg.instruction_snap and not self.training:  # new phrasings -> nearest training instruction
                instructions = self.instruction_snap(list(instructions))
            feats, m = self.text_encoder(list(instructions))
            return feats.to(self.device), m.to(self.device)
        if ids is None:
            ids, mask = self.tokenize(list(instructions))
        return self.text_encoder(ids, mask), mask

    # ------------------------------------------------------------------ the network, step by step
    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A raw batch -> the processor's prepared batch on this policy's device (modalities dropped in training)."""
        return self.processor(batch, self.device, training=self.training)

    def encode(self, b: dict[str, Any], mrm: bool = False, lang_ids: torch.Tensor | None = None,
               lang_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """All encoders for a prepared batch -> token sequences and masks (absent modalities masked out)."""
        enc: dict[str, Any] = {"vision": None, "vision_mask": None, "state": None, "state_mask": None,
                               "lang": None, "lang_mask": None, "extras": {}, "seq": b.get("seq")}
        if self.has_language:
            lf, lm = self.encode_language(b["instruction"], lang_ids, lang_mask)
            enc["lang"], enc["lang_mask"] = lf, lm & b["instruction_present"].unsqueeze(1)
        if self.has_image:
            frame_mask = b["obs_mask"] & b["image_present"].unsqueeze(1)  # (B, T)
            instruction = None
            if self.grounding is not None:
                instruction = (self.pooled_instruction(enc), enc["lang_mask"].any(dim=1))  # (B, D), (B,)
            v, vm, extras = self.encode_image(b["image"], frame_mask, mrm=mrm, instruction=instruction)
            enc.update(vision=v, vision_mask=vm, extras=extras)
        if self.has_state:
            enc["state"] = self.encode_state(b["state"])
            enc["state_mask"] = b["obs_mask"] & b["state_present"].unsqueeze(1)
            if self.position_proj is not None:
                enc["state"] = enc["state"] + self.position_state(enc, b)  # (B, T, D)
        if self.grounding is not None and self.cfg.grounding_dropout >= 1:
            enc["fusion_lang_mask"] = torch.zeros_like(enc["lang_mask"])  # the instruction reaches the cells only
        elif self.grounding is not None and self.training and self.cfg.grounding_dropout > 0:
            # the fusion alone loses the instruction on these rows: their action must come from the grounded cells
            # (whole episodes with a memory, which would otherwise carry the instruction over from other steps)
            seq = enc.get("seq")
            n = seq[2] if seq is not None else enc["lang_mask"].shape[0]
            drop = torch.rand(n, device=self.device) < self.cfg.grounding_dropout  # (episodes or rows,)
            if seq is not None:
                drop = drop[seq[0]]  # (B,) each step takes its episode's draw
            enc["fusion_lang_mask"] = enc["lang_mask"] & ~drop.unsqueeze(1)
        return enc

    def fuse(self, enc: dict[str, Any]) -> torch.Tensor:
        """Fusion of the encoded tokens -> (B, D), before the memory."""
        lang_mask = enc.get("fusion_lang_mask", enc["lang_mask"])
        return self.fusion(enc["vision"], enc["lang"], enc["vision_mask"], lang_mask, enc["state"], enc["state_mask"])

    def features(self, enc: dict[str, Any]) -> torch.Tensor:
        """The features the heads read, per step (B, D): fusion, then the memory if any (see :meth:`apply_memory`)."""
        return self.apply_memory(self.fuse(enc), enc.get("seq"))

    def apply_memory(self, fused: torch.Tensor, seq: tuple[torch.Tensor, torch.Tensor, int, int] | None) -> torch.Tensor:
        """Fusion output (N, D) -> the features the heads read: unchanged without a memory, else after the GRU
        over the episodes' steps (``seq``) or, without ``seq``, each row as an episode's first step."""
        return fused if self.memory is None else self.remember(fused, seq)[0]

    def remember(self, fused: torch.Tensor, seq: tuple[torch.Tensor, torch.Tensor, int, int] | None,
                 h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory over fused step features (N, D) -> (features (N, D), last hidden state).

        ``seq`` (rows, positions, B, L): the steps are episodes' steps; they are put back as (B, L, D) (right
        padding never reaches a real step's output) and run from a zero state. Without ``seq`` each row is one
        step from ``h0`` (N, D) (zeros: an episode's first step), as in acting."""
        if seq is None:
            x = fused.unsqueeze(1)  # (N, 1, D)
            h = None if h0 is None else h0.unsqueeze(0).to(fused.dtype)  # (1, N, D)
            out, h_n = self.memory(x, h)
            out = out[:, 0]  # (N, D)
        else:
            rows, pos, b, l = seq
            x = fused.new_zeros(b, l, fused.shape[-1])  # (B, L, D)
            x[rows, pos] = fused
            out, h_n = self.memory(x)  # (B, L, D)
            out = out[rows, pos]  # (N, D)
        return self.memory_norm(fused + out), h_n[0]

    def pooled_instruction(self, enc: dict[str, Any]) -> torch.Tensor:
        """(B, D): the mean of the instruction's token features (masked)."""
        return masked_mean_pool(enc["lang"], enc["lang_mask"])

    def pooled_observation(self, enc: dict[str, Any]) -> torch.Tensor:
        """(B, D): the mean of the observation's image and state tokens (masked), the image tokens without the
        fixed position terms the encoder added (``extras["positions"]``). In a mean over a frame's tokens those
        terms are the same for every frame; with them the pooled image was ~99.8% one constant vector (cosine
        0.998 to the mean over frames, GoToLocal RGB at initialisation), so after the contrastive loss's L2
        normalisation every frame had almost the same embedding, and the loss's gradient, orthogonal to each
        embedding, could hardly remove that constant: pretraining aligned nothing from pixels
        (``bench/alignment.py``)."""
        parts, masks = [], []
        for k in ("vision", "state"):
            if enc[k] is not None:
                x = enc[k]
                if k == "vision" and "positions" in enc["extras"]:
                    x = x - enc["extras"]["positions"]  # (B, T*N, D) - (1, T*N, D)
                if k == "vision" and "grounding" in enc["extras"]:
                    x = x - enc["extras"]["grounding"]  # the instruction's own match: it would leak the instruction
                parts.append(x)
                masks.append(enc[f"{k}_mask"])
        return masked_mean_pool(torch.cat(parts, 1), torch.cat(masks, 1))  # (B, D)

    def action_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Head outputs for the K-step chunk: (B, K, n_actions) logits | (B, K, A) | (B, K, A, bins) logits."""
        return self.action_head(features)

    @torch.no_grad()
    def embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Alignment embeddings (observation (B,E), instruction (B,E)) for retrieval metrics."""
        enc = self.encode(self.prepare(batch))
        return self.obs_embed(self.pooled_observation(enc)), self.instr_embed(self.pooled_instruction(enc))

    # ------------------------------------------------------------------ acting (state in self.acting)
    @torch.no_grad()
    def predict_chunk(self, batch: dict[str, Any], sample: bool | None = None) -> torch.Tensor:
        """Actions for every step of the chunk: (B, K) int64 or (B, K, A) float.

        ``sample`` (default: ``cfg.action_selection == "sample"``) draws discrete/binned actions from the softmax at
        ``cfg.sample_temperature`` with the acting generator; otherwise the argmax. The regression head is
        deterministic; the generative heads (flow, diffusion) always sample, from the acting generator."""
        return self.pick(self.action_outputs(self.features(self.encode(self.prepare(batch)))), sample)

    def pick(self, out: torch.Tensor, sample: bool | None = None) -> torch.Tensor:
        """Head outputs -> actions: continuous as they are; discrete/binned argmax or sampled."""
        if sample is None:
            sample = self.cfg.action_selection == "sample"
        return self.action_head.pick(out, bool(sample), self.cfg.sample_temperature, self.acting.generator)

    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        """Batched acting: keeps the last ``history`` frames per env, a queue of chunked actions, the memory."""
        return self.acting.select_action(observation)

    def reset(self, env_indices: Any = None) -> None:
        """Forget observation history, memory and queued actions (all envs, or only ``env_indices``)."""
        self.acting.reset(env_indices)


__all__ = ["VLAPolicy"]
