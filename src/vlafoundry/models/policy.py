"""VLAPolicy: a vision-language-action policy composed only of ``vlafoundry.nn`` parts.

Data flow for one training batch (B samples, T history frames, K-step action chunks)::

    image (B,T,H,W,C) uint8 ──SymbolicGridEncoder / VisionEncoder──► (B*T, N, D) ──vision context──► (B, T*N, D)
    state (B,T,S)            ──normalise, MLP──────────────────────► (B, T, D)       (extra tokens)
    instruction list[str]    ──TextTokenizer+TextProcessingModule / LanguageEncoder──► (B, L, D)
                             ──fusion (cross_attention | early | late | film)────────► (B, D)
                             ──[model.memory gru: GRU over the episode's steps]──────► (B, D)
                             ──action head (discrete | continuous chunk | binned)────► loss / actions

With a memory the batch holds whole episodes (``EpisodeDataset``: (B, L, ...) with ``seq_mask``); ``prepare``
flattens them to their N real steps for the encoders and fusion, and the GRU puts them back in order. Acting keeps
one hidden state per env.

Missing modalities: every sample carries ``image_present`` / ``instruction_present`` / ``state_present``; a
missing modality's tokens are masked out and the fusion module substitutes its learned placeholder. Training
drops modalities at random (``model.modality_dropout``) so the policy acts with any subset of its inputs.

Alignment pretraining (the chapter's objectives) reuses the same encoders: ``obs_embed``/``instr_embed`` project
pooled observation and instruction features into a shared space for the contrastive loss (positives are
samples with the same instruction), ITM with hard negatives mined from those similarities, MLM on instruction
tokens and MRM on image cells/patches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vlafoundry.models.config import PolicyConfig
from vlafoundry.nn._checks import check_tensor
from vlafoundry.nn.action import ActionDecoder, ActionTokenizer
from vlafoundry.nn.blocks import TransformerEncoderBlock
from vlafoundry.nn.features import FourierFeatures
from vlafoundry.nn.fusion import EarlyFusion, FiLMFusion, LateFusion, VisionLanguageFusion, masked_mean_pool
from vlafoundry.nn.language import LanguageEncoder, TextProcessingModule, TextTokenizer
from vlafoundry.nn.losses import ContrastiveLoss, MultimodalPretrainingTask, mean_count_over_ranks
from vlafoundry.nn.moe import MultimodalMixtureOfExperts
from vlafoundry.nn.vision import SymbolicGridEncoder, VisionEncoder, get_1d_sincos_pos_embed

MODALITIES = ("image", "instruction", "state")


@dataclass
class PolicySpec:
    """What the policy must know about its data: spaces, normalisation statistics, instruction corpus."""

    env: str
    action_type: str  # "discrete" | "continuous"
    action_dim: int
    num_actions: int | None = None
    action_low: list[float] | None = None
    action_high: list[float] | None = None
    state_dim: int = 0
    image_shape: list[int] | None = None
    state_mean: list[float] | None = None
    state_std: list[float] | None = None
    tasks: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.action_type not in ("discrete", "continuous"):
            raise ValueError(f"action_type: expected 'discrete' or 'continuous', got {self.action_type!r}")
        if self.action_type == "discrete" and not self.num_actions:
            raise ValueError("num_actions: expected a positive integer for a discrete action space, got None")

    @classmethod
    def from_dataset(cls, ds: Any) -> PolicySpec:
        """From a :class:`~vlafoundry.data.DemoDataset`: its EnvSpec, state statistics and task list."""
        spec = ds.spec
        stats = ds.stats.get("state") if ds.stats else None
        return cls(
            env=str(ds.env_name),
            action_type=spec.action_type,
            action_dim=int(spec.action_dim),
            num_actions=spec.num_actions,
            action_low=[float(v) for v in spec.action_low] if spec.action_low is not None else None,
            action_high=[float(v) for v in spec.action_high] if spec.action_high is not None else None,
            state_dim=int(spec.state_dim),
            image_shape=list(spec.image_shape) if spec.image_shape else None,
            state_mean=np.asarray(stats["mean"], dtype=np.float64).reshape(-1).tolist() if stats else None,
            state_std=np.asarray(stats["std"], dtype=np.float64).reshape(-1).tolist() if stats else None,
            tasks=list(ds.tasks),
        )


def _moe_factory(cfg: PolicyConfig):
    if not cfg.moe:
        return None

    def make(d_model: int, d_ff: int, dropout: float) -> nn.Module:
        return MultimodalMixtureOfExperts(cfg.num_experts, d_model, top_k=cfg.moe_top_k,
                                          capacity_factor=cfg.moe_capacity_factor, d_ff=d_ff, dropout=dropout)

    return make


def _f(t: torch.Tensor) -> float:
    """A metric value: detached Python float."""
    return float(t.detach())


class VLAPolicy(nn.Module):
    """LeRobot-style policy: ``forward(batch) -> (loss, metrics)``, ``select_action(obs)``, ``reset()``."""

    def __init__(self, cfg: PolicyConfig, spec: PolicySpec, tokenizer: TextTokenizer | None = None,
                 temperature: float = 0.07, learnable_temperature: bool = True) -> None:
        super().__init__()
        self.cfg, self.spec = cfg, spec
        d = cfg.d_model
        ffn = _moe_factory(cfg)
        self.has_image = cfg.vision != "none" and spec.image_shape is not None
        self.has_state = cfg.use_state and spec.state_dim > 0
        self.has_language = cfg.language != "none"

        # ---- vision
        self.vision_encoder: nn.Module | None = None
        if self.has_image:
            h, w, c = spec.image_shape
            if cfg.vision == "grid":
                if c != 3:
                    raise ValueError(f"model.vision=grid needs BabyAI's symbolic (H, W, 3) view, got image shape "
                                     f"{tuple(spec.image_shape)}; use model.vision=patch for RGB")
                self.vision_encoder = SymbolicGridEncoder(d, cls_token=False)
                self.num_image_tokens = h * w
            else:
                self.vision_encoder = VisionEncoder(c, cfg.patch_size, d)
                self.num_image_tokens = self.vision_encoder.num_tokens(h, w)
            self.vision_context = nn.ModuleList(
                TransformerEncoderBlock(d, cfg.num_heads, cfg.d_ff, cfg.dropout, ffn_layer=ffn)
                for _ in range(cfg.vision_layers)
            )
            self.mrm_mask_token = nn.Parameter(torch.zeros(1, 1, d))
            nn.init.normal_(self.mrm_mask_token, std=0.02)
        # temporal positions for history frames (fixed sin-cos, index 0 = oldest frame)
        temporal = torch.from_numpy(get_1d_sincos_pos_embed(d, np.arange(cfg.history))).float()
        self.register_buffer("temporal_pos", temporal, persistent=False)  # (T, D)

        # ---- state
        if self.has_state:
            self.state_features = FourierFeatures(spec.state_dim, cfg.state_fourier)  # identity when 0 octaves
            self.state_proj = nn.Sequential(nn.Linear(self.state_features.out_features, d), nn.GELU(), nn.Linear(d, d))
            mean = torch.tensor(spec.state_mean or [0.0] * spec.state_dim, dtype=torch.float32)
            std = torch.tensor(spec.state_std or [1.0] * spec.state_dim, dtype=torch.float32)
            self.register_buffer("state_mean", mean)
            self.register_buffer("state_std", std.clamp_min(1e-6))

        # ---- language
        self.tokenizer = tokenizer
        self.text_encoder: nn.Module | None = None
        if cfg.language == "scratch":
            if tokenizer is None:
                raise ValueError("model.language=scratch needs a TextTokenizer (train one on the instructions)")
            self.text_encoder = TextProcessingModule(tokenizer.vocab_size, d, max_seq_len=128, dropout=cfg.dropout,
                                                     num_layers=cfg.text_layers, num_heads=cfg.num_heads,
                                                     d_ff=cfg.d_ff)
        elif cfg.language == "pretrained":
            self.text_encoder = LanguageEncoder(cfg.pretrained_model, d_model=d, freeze=True)
        self._token_cache: dict[str, torch.Tensor] = {}

        # ---- fusion
        if cfg.fusion == "cross_attention":
            self.fusion = VisionLanguageFusion(d, d, d, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                                               d_ff=cfg.d_ff, dropout=cfg.dropout, ffn_layer=ffn)
        elif cfg.fusion == "early":
            self.fusion = EarlyFusion(d, num_layers=cfg.num_layers, num_heads=cfg.num_heads, d_ff=cfg.d_ff,
                                      dropout=cfg.dropout, ffn_layer=ffn)
        elif cfg.fusion == "late":
            self.fusion = LateFusion(d, num_layers=cfg.num_layers, num_heads=cfg.num_heads, d_ff=cfg.d_ff,
                                     dropout=cfg.dropout, ffn_layer=ffn)
        else:
            self.fusion = FiLMFusion(d, num_layers=cfg.num_layers, dropout=cfg.dropout)

        # ---- memory: a GRU over the episode's fused step features (residual, then LayerNorm)
        self.memory: nn.GRU | None = None
        if cfg.memory == "gru":
            self.memory = nn.GRU(d, d, batch_first=True)
            self.memory_norm = nn.LayerNorm(d)
        self._memory_h: torch.Tensor | None = None  # (N, D) rollout state, see select_action

        # ---- action head
        head = cfg.head
        if head == "auto":
            head = "discrete" if spec.action_type == "discrete" else "continuous"
        if head == "discrete" and spec.action_type != "discrete":
            raise ValueError("model.head=discrete needs a discrete action space; use continuous or binned")
        if head in ("continuous", "binned") and spec.action_type != "continuous":
            raise ValueError(f"model.head={head} needs a continuous action space; use discrete")
        self.head_kind = head
        k, a = cfg.chunk, spec.action_dim
        if head == "discrete":
            self.action_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, k * spec.num_actions))
        elif head == "continuous":
            low = spec.action_low or [-1.0] * a
            high = spec.action_high or [1.0] * a
            self.action_head = ActionDecoder(d, a, chunk_size=k, low=low, high=high)
        else:
            low = spec.action_low or [-1.0] * a
            high = spec.action_high or [1.0] * a
            self.action_tokenizer = ActionTokenizer(cfg.num_bins, low=low, high=high, action_dim=a)
            self.action_head = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, k * a * cfg.num_bins))

        # ---- alignment pretraining heads (the chapter's objectives)
        self.obs_embed = nn.Linear(d, cfg.embed_dim)
        self.instr_embed = nn.Linear(d, cfg.embed_dim)
        self._temperature, self._learnable_temperature = float(temperature), bool(learnable_temperature)
        self.contrastive = ContrastiveLoss(temperature=temperature, learnable_scale=learnable_temperature)
        vocab = tokenizer.vocab_size if tokenizer is not None else 2
        self.pretrain_heads = MultimodalPretrainingTask(d, vocab_size=vocab, patch_dim=d)

        self._history: torch.Tensor | None = None  # rollout state, see select_action
        self._sample_rng = torch.Generator().manual_seed(0)  # action sampling; re-seeded by reset()
        self._queue: list[list[Any]] = []

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_dataset(cls, cfg: PolicyConfig, ds: Any, temperature: float = 0.07,
                     learnable_temperature: bool = True) -> VLAPolicy:
        """Build for a dataset: its spaces and statistics, and a tokenizer trained on its instructions."""
        tok = None
        if cfg.language == "scratch":
            tok = TextTokenizer.train(list(ds.instructions), kind=cfg.tokenizer, vocab_size=cfg.tokenizer_vocab)
        return cls(cfg, PolicySpec.from_dataset(ds), tok, temperature, learnable_temperature)

    def extra_state(self) -> dict[str, Any]:
        """Non-tensor state saved in the checkpoint's extra.json (spec and tokenizer)."""
        from dataclasses import asdict

        return {"spec": asdict(self.spec), "tokenizer": self.tokenizer.to_json() if self.tokenizer else None,
                "temperature": self._temperature, "learnable_temperature": self._learnable_temperature}

    def compilable_modules(self) -> list[nn.Module]:
        """The tensor-only sub-modules that ``torch.compile`` speeds up (used by ``train.compile``)."""
        mods: list[nn.Module] = [self.fusion, self.action_head]
        if self.has_image:
            mods += [self.vision_encoder, *self.vision_context]
        if self.cfg.language == "scratch":
            mods.append(self.text_encoder)
        return mods

    @property
    def device(self) -> torch.device:
        return self.obs_embed.weight.device

    # ------------------------------------------------------------------ encoders
    def encode_image(self, image: torch.Tensor, frame_mask: torch.Tensor, mrm: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """(B,T,H,W,C) uint8 -> tokens (B, T*N, D), mask (B, T*N); with ``mrm`` also the MRM targets."""
        b, t = image.shape[:2]
        flat = image.reshape(b * t, *image.shape[2:])  # (B*T, H, W, C)
        tokens = self.vision_encoder(flat)  # (B*T, N, D); uint8 RGB is read channels-last by VisionEncoder
        n = tokens.shape[1]
        extras: dict[str, torch.Tensor] = {}
        if mrm:
            patch_mask = self.pretrain_heads.mask_patches(b * t, n, 0.15, device=tokens.device)  # (B*T, N)
            pos = self.vision_encoder.pos_cache.get(*self.grid_hw(image), tokens.device, tokens.dtype)
            pos = pos.expand(b * t, -1, -1)
            extras["mrm_target"] = tokens.detach()
            extras["mrm_mask"] = patch_mask
            tokens = torch.where(patch_mask.unsqueeze(-1), self.mrm_mask_token + pos, tokens)
        mask = frame_mask.reshape(b * t, 1).expand(b * t, n)  # (B*T, N)
        for blk in self.vision_context:
            tokens = blk(tokens, mask)
        if mrm:
            extras["mrm_pred"] = tokens
        tokens = tokens.reshape(b, t, n, -1) + self.temporal_pos[-t:].view(1, t, 1, -1)  # (B, T, N, D)
        return tokens.reshape(b, t * n, -1), mask.reshape(b, t * n), extras

    def grid_hw(self, image: torch.Tensor) -> tuple[int, int]:
        h, w = image.shape[2], image.shape[3]
        if self.cfg.vision == "grid":
            return h, w
        return self.vision_encoder.grid_size(h, w)

    def encode_state(self, state: torch.Tensor) -> torch.Tensor:
        """(B,T,S) raw state -> (B,T,D) tokens (normalised with the dataset statistics)."""
        x = (state - self.state_mean) / self.state_std
        return self.state_proj(self.state_features(x)) + self.temporal_pos[-state.shape[1]:].unsqueeze(0)

    def tokenize(self, instructions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Instruction strings -> ids (B, L) int64, mask (B, L) bool; each distinct string tokenised once."""
        rows = []
        for s in instructions:
            ids = self._token_cache.get(s)
            if ids is None:
                ids = self.tokenizer.encode([s])[0][0]
                ids = ids[ids != self.tokenizer.pad_id] if ids.numel() > 1 else ids
                if len(self._token_cache) < 100_000:
                    self._token_cache[s] = ids
            rows.append(ids)
        ids = nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=self.tokenizer.pad_id)
        ids = ids.to(self.device)
        return ids, ids != self.tokenizer.pad_id

    def encode_language(self, instructions: list[str], ids: torch.Tensor | None = None,
                        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.language == "pretrained":
            feats, m = self.text_encoder(list(instructions))
            return feats.to(self.device), m.to(self.device)
        if ids is None:
            ids, mask = self.tokenize(list(instructions))
        return self.text_encoder(ids, mask), mask

    # ------------------------------------------------------------------ batch handling
    def prepare(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Move a batch to the policy's device, add a history axis where missing, validate inputs.

        A batch of whole episodes (``seq_mask`` (B, L), from ``EpisodeDataset``) becomes a batch of its N real
        steps, with ``seq`` = (rows (N,), positions (N,), B, L) so the memory can put them back in order."""
        seq = None
        if batch.get("seq_mask") is not None:
            batch, seq = self._flatten_episodes(batch)
        dev = self.device
        out: dict[str, Any] = {"instruction": list(batch["instruction"]), "seq": None}
        if seq is not None:
            out["seq"] = (seq[0].to(dev), seq[1].to(dev), seq[2], seq[3])
        b = len(out["instruction"])
        if self.has_image:
            img = batch.get("image")
            if img is None:
                raise ValueError("batch: expected key 'image' for a policy with a vision encoder")
            img = torch.as_tensor(img)
            if img.dim() == 4:
                img = img.unsqueeze(1)  # (B, 1, H, W, C)
            check_tensor("image", img, ndim=5, floating=False)
            if img.shape[0] != b:
                raise ValueError(f"image: expected {b} rows (one per instruction), got shape {tuple(img.shape)}")
            if list(img.shape[2:]) != list(self.spec.image_shape):
                raise ValueError(f"image: expected frames of shape {tuple(self.spec.image_shape)}, "
                                 f"got {tuple(img.shape[2:])}")
            out["image"] = img.to(dev, non_blocking=True)
        if self.has_state:
            st = torch.as_tensor(batch["state"], dtype=torch.float32)
            if st.dim() == 2:
                st = st.unsqueeze(1)  # (B, 1, S)
            check_tensor("state", st, ndim=3, last_dim=self.spec.state_dim, finite=True)
            if st.shape[0] != b:
                raise ValueError(f"state: expected {b} rows (one per instruction), got shape {tuple(st.shape)}")
            out["state"] = st.to(dev, non_blocking=True)
        t = out["image"].shape[1] if self.has_image else (out["state"].shape[1] if self.has_state else 1)
        obs_mask = batch.get("obs_mask")
        obs_mask = torch.ones(b, t, dtype=torch.bool) if obs_mask is None else torch.as_tensor(obs_mask).bool()
        if obs_mask.dim() == 1:
            obs_mask = obs_mask.unsqueeze(1)
        out["obs_mask"] = obs_mask.to(dev)
        for m in MODALITIES:
            p = batch.get(f"{m}_present")
            if p is not None and tuple(np.shape(p)) != (b,):
                raise ValueError(f"{m}_present: expected shape ({b},), got {tuple(np.shape(p))}")
            p = torch.ones(b, dtype=torch.bool) if p is None else torch.as_tensor(p).bool().reshape(b)
            out[f"{m}_present"] = p.to(dev)
        for k in ("action", "action_mask", "instruction_id", "task_id"):
            if k in batch and batch[k] is not None:
                out[k] = torch.as_tensor(batch[k]).to(dev, non_blocking=True)
        return out

    @staticmethod
    def _flatten_episodes(batch: dict[str, Any]) -> tuple[dict[str, Any], tuple[torch.Tensor, torch.Tensor, int, int]]:
        """Episode batch (B, L, ...) -> step batch (N, ...) of the real steps, and (rows, positions, B, L)."""
        mask = torch.as_tensor(batch["seq_mask"]).bool()
        check_tensor("seq_mask", mask, ndim=2, floating=False)
        b, l = mask.shape
        if len(batch["instruction"]) != b:
            raise ValueError(f"instruction: expected {b} episodes (seq_mask has {b} rows), got {len(batch['instruction'])}")
        rows, pos = mask.nonzero(as_tuple=True)  # (N,), row-major: each episode's steps in order
        out: dict[str, Any] = {"instruction": [batch["instruction"][i] for i in rows.tolist()]}
        for k, v in batch.items():
            if k in ("instruction", "seq_mask", "obs_mask") or v is None or not isinstance(v, (torch.Tensor, np.ndarray)):
                continue
            v = torch.as_tensor(v)
            if v.dim() >= 2 and tuple(v.shape[:2]) == (b, l):
                out[k] = v.to(rows.device)[rows, pos]  # (N, ...) per step
            elif v.dim() >= 1 and v.shape[0] == b:
                out[k] = v.to(rows.device)[rows]  # per episode -> per step
        return out, (rows, pos, b, l)

    def _apply_modality_dropout(self, b: dict[str, Any]) -> None:
        md = self.cfg.modality_dropout
        for m in MODALITIES:
            p = getattr(md, m)
            if p > 0:
                keep = torch.rand(b[f"{m}_present"].shape, device=self.device) >= p
                b[f"{m}_present"] = b[f"{m}_present"] & keep

    def encode(self, b: dict[str, Any], mrm: bool = False, lang_ids: torch.Tensor | None = None,
                lang_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """All encoders for a prepared batch -> token sequences and masks (absent modalities masked out)."""
        enc: dict[str, Any] = {"vision": None, "vision_mask": None, "state": None, "state_mask": None,
                               "lang": None, "lang_mask": None, "extras": {}, "seq": b.get("seq")}
        if self.has_image:
            frame_mask = b["obs_mask"] & b["image_present"].unsqueeze(1)  # (B, T)
            v, vm, extras = self.encode_image(b["image"], frame_mask, mrm=mrm)
            enc.update(vision=v, vision_mask=vm, extras=extras)
        if self.has_state:
            enc["state"] = self.encode_state(b["state"])
            enc["state_mask"] = b["obs_mask"] & b["state_present"].unsqueeze(1)
        if self.has_language:
            lf, lm = self.encode_language(b["instruction"], lang_ids, lang_mask)
            enc["lang"], enc["lang_mask"] = lf, lm & b["instruction_present"].unsqueeze(1)
        return enc

    def features(self, enc: dict[str, Any]) -> torch.Tensor:
        """Fused features per step (B, D); with a memory, after the GRU (see :meth:`apply_memory`)."""
        return self.apply_memory(self.fusion(*self._fusion_inputs(enc)), enc.get("seq"))

    def apply_memory(self, fused: torch.Tensor, seq: tuple[torch.Tensor, torch.Tensor, int, int] | None) -> torch.Tensor:
        """Fusion output (N, D) -> the features the heads read: unchanged without a memory, else after the GRU
        over the episodes' steps (``seq``) or, without ``seq``, each row as an episode's first step."""
        return fused if self.memory is None else self._remember(fused, seq)[0]

    @staticmethod
    def _fusion_inputs(enc: dict[str, Any]) -> tuple[Any, ...]:
        return (enc["vision"], enc["lang"], enc["vision_mask"], enc["lang_mask"], enc["state"], enc["state_mask"])

    def _remember(self, fused: torch.Tensor, seq: tuple[torch.Tensor, torch.Tensor, int, int] | None,
                  h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The memory over fused step features (N, D) -> (features (N, D), last hidden state).

        ``seq`` (rows, positions, B, L): the steps are episodes' steps; they are put back as (B, L, D) (right
        padding never reaches a real step's output) and run from a zero state. Without ``seq`` each row is one
        step from ``h0`` (N, D) (zeros: an episode's first step), as in ``select_action``."""
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

    @staticmethod
    def pooled_instruction(enc: dict[str, Any]) -> torch.Tensor:
        """(B, D): the mean of the instruction's token features (masked)."""
        return masked_mean_pool(enc["lang"], enc["lang_mask"])

    def pooled_observation(self, enc: dict[str, Any]) -> torch.Tensor:
        """(B, D): the mean of the observation's image and state tokens (masked)."""
        parts, masks = [], []
        for k in ("vision", "state"):
            if enc[k] is not None:
                parts.append(enc[k])
                masks.append(enc[f"{k}_mask"])
        return masked_mean_pool(torch.cat(parts, 1), torch.cat(masks, 1))  # (B, D)

    # ------------------------------------------------------------------ heads
    def action_outputs(self, fused: torch.Tensor) -> torch.Tensor:
        b, k, a = fused.shape[0], self.cfg.chunk, self.spec.action_dim
        if self.head_kind == "discrete":
            return self.action_head(fused).view(b, k, self.spec.num_actions)  # (B, K, n_actions) logits
        if self.head_kind == "continuous":
            out = self.action_head(fused)
            return out.view(b, k, a)  # (B, K, A)
        return self.action_head(fused).view(b, k, a, self.cfg.num_bins)  # (B, K, A, bins) logits

    def _loss_denominator(self, count: torch.Tensor) -> torch.Tensor:
        """How many loss terms (action entries, masked tokens / patches, ITM pairs) to average a summed loss over.
        In DDP training: the mean count over ranks, so that DDP's gradient average equals one process's mean over
        the global batch even when ranks hold different numbers of terms (whole episodes of different lengths,
        random masks). Otherwise this rank's count."""
        if self.training:
            return mean_count_over_ranks(count)
        return count.detach().float().clamp_min(1)

    def _global_mean(self, losses: torch.Tensor) -> torch.Tensor:
        """(M,) per-term losses -> scalar: their sum over :meth:`_loss_denominator` (zero, with graph, when M = 0)."""
        return losses.sum() / self._loss_denominator(torch.tensor(losses.numel(), device=losses.device))

    def bc_loss(self, fused: torch.Tensor, b: dict[str, Any], loss_cfg: Any) -> tuple[torch.Tensor, dict]:
        out = self.action_outputs(fused)
        act, amask = b["action"], b["action_mask"]
        if act.dim() == 1:
            act = act.unsqueeze(1)
        if amask.dim() == 1:
            amask = amask.unsqueeze(1)
        w = amask.float()
        denom = self._loss_denominator(w.sum())
        metrics: dict[str, float] = {}
        if self.head_kind == "discrete":
            ce = F.cross_entropy(out.flatten(0, 1), act.long().flatten(), reduction="none",
                                 label_smoothing=loss_cfg.label_smoothing).view_as(w)
            loss = (ce * w).sum() / denom
            acc = ((out.argmax(-1) == act).float() * w).sum() / w.sum().clamp_min(1)
            metrics["action_acc"] = _f(acc)
        elif self.head_kind == "continuous":
            err = (out - act.float()).abs() if loss_cfg.continuous == "l1" else (out - act.float()) ** 2
            loss = (err.mean(-1) * w).sum() / denom
            metrics["action_l1"] = _f(((out - act).abs().mean(-1) * w).sum() / w.sum().clamp_min(1))
        else:
            bins = self.action_tokenizer.encode(act.float()).to(out.device)  # (B, K, A)
            ce = F.cross_entropy(out.flatten(0, 2), bins.flatten(), reduction="none").view(bins.shape).mean(-1)
            loss = (ce * w).sum() / denom
            pred = self.action_tokenizer.decode(out.argmax(-1)).to(out.device)
            metrics["action_l1"] = float(((pred - act).abs().mean(-1) * w).sum() / w.sum().clamp_min(1))
        return loss, metrics

    def moe_aux_loss(self) -> torch.Tensor | None:
        losses = [m.aux_loss for m in self.modules()
                  if isinstance(m, MultimodalMixtureOfExperts) and getattr(m, "aux_loss", None) is not None]
        return torch.stack(losses).mean() if losses else None

    # ------------------------------------------------------------------ the policy contract
    def forward(self, batch: dict[str, Any], loss_cfg: Any = None) -> tuple[torch.Tensor, dict[str, float]]:
        """One training/validation step's loss: behaviour cloning plus the weighted alignment objectives."""
        from vlafoundry.train.config import LossConfig

        lc = loss_cfg or LossConfig()
        b = self.prepare(batch)
        if self.training:
            self._apply_modality_dropout(b)
        want_mrm = lc.mrm > 0 and self.has_image and self.training
        want_mlm = lc.mlm > 0 and self.cfg.language == "scratch"
        lang_ids = lang_mask = mlm_labels = None
        if want_mlm:
            ids, mask = self.tokenize(b["instruction"])
            lang_ids, mlm_labels = self.pretrain_heads.mask_tokens(
                ids, mask, self.tokenizer.mask_id, self.tokenizer.vocab_size, self.tokenizer.special_ids)
            lang_mask = mask
        enc = self.encode(b, mrm=want_mrm, lang_ids=lang_ids, lang_mask=lang_mask)
        total = torch.zeros((), device=self.device)
        metrics: dict[str, float] = {}
        if lc.bc > 0:
            fused = self.features(enc)
            bc, m = self.bc_loss(fused, b, lc)
            total = total + lc.bc * bc
            metrics.update(m, bc=_f(bc))
        need_align = (lc.contrastive > 0 or lc.itm > 0) and self.has_language
        if need_align:
            pair_ids = self._pair_ids(b)
            obs_p = self.pooled_observation(enc)
            lang_p = self.pooled_instruction(enc)
            ov, lv = self.obs_embed(obs_p), self.instr_embed(lang_p)
            if lc.contrastive > 0:
                con = self.contrastive(ov, lv, pair_ids)
                total = total + lc.contrastive * con
                metrics["contrastive"] = _f(con)
            if lc.itm > 0:
                with torch.no_grad():
                    sim = self.contrastive.similarity(ov, lv)
                itm_terms, itm_acc = self.pretrain_heads.itm_loss(obs_p, lang_p, sim, pair_ids, reduction="none")
                itm = self._global_mean(itm_terms)
                total = total + lc.itm * itm
                metrics.update(itm=_f(itm), itm_acc=_f(itm_acc))
        if want_mlm:
            mlm = self._global_mean(self.pretrain_heads.mlm_loss(enc["lang"], mlm_labels, reduction="none"))
            total = total + lc.mlm * mlm
            metrics["mlm"] = _f(mlm)
        if want_mrm:
            ex = enc["extras"]
            mrm = self._global_mean(self.pretrain_heads.mrm_loss(ex["mrm_pred"], ex["mrm_target"], ex["mrm_mask"],
                                                                 reduction="none"))
            total = total + lc.mrm * mrm
            metrics["mrm"] = _f(mrm)
        aux = self.moe_aux_loss()
        if aux is not None and lc.moe_aux > 0:
            total = total + lc.moe_aux * aux
            metrics["moe_aux"] = _f(aux)
        metrics["loss"] = _f(total)
        return total, metrics

    def _pair_ids(self, b: dict[str, Any]) -> torch.Tensor:
        """Samples that share an instruction are positives of each other."""
        if "instruction_id" in b:
            return b["instruction_id"].long().reshape(-1)
        index: dict[str, int] = {}
        ids = [index.setdefault(s, len(index)) for s in b["instruction"]]
        return torch.tensor(ids, device=self.device)

    @torch.no_grad()
    def embed(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Alignment embeddings (observation (B,E), instruction (B,E)) for retrieval metrics."""
        b = self.prepare(batch)
        enc = self.encode(b)
        obs_p = self.pooled_observation(enc)
        lang_p = self.pooled_instruction(enc)
        return self.obs_embed(obs_p), self.instr_embed(lang_p)

    @torch.no_grad()
    def predict_chunk(self, batch: dict[str, Any], sample: bool | None = None) -> torch.Tensor:
        """Actions for every step of the chunk: (B, K) int64 or (B, K, A) float.

        ``sample`` (default: ``cfg.action_selection == "sample"``) draws discrete/binned actions from the softmax at
        ``cfg.sample_temperature`` with the policy's generator; otherwise the argmax. Continuous heads are
        deterministic.
        """
        return self._pick(self.action_outputs(self.features(self.encode(self.prepare(batch)))), sample)

    def _pick(self, out: torch.Tensor, sample: bool | None = None) -> torch.Tensor:
        """Head outputs -> actions: continuous as they are; discrete/binned argmax or sampled."""
        if self.head_kind == "continuous":
            return out
        if sample is None:
            sample = self.cfg.action_selection == "sample"
        if sample:
            probs = torch.softmax(out.float() / self.cfg.sample_temperature, dim=-1)
            flat = probs.reshape(-1, probs.shape[-1]).cpu()
            idx = torch.multinomial(flat, 1, generator=self._sample_rng).view(probs.shape[:-1]).to(out.device)
        else:
            idx = out.argmax(-1)
        if self.head_kind == "discrete":
            return idx
        return self.action_tokenizer.decode(idx).to(out.device)

    @property
    def stateless(self) -> bool:
        """Whether a row's action depends only on that row's current observation (no history, chunks or memory)."""
        return self.cfg.history == 1 and self.cfg.chunk == 1 and self.memory is None

    def reset(self, env_indices: Any = None) -> None:
        """Forget observation history, memory and queued actions (all envs, or only ``env_indices``)."""
        if env_indices is None or self._history is None:
            self._history = None
            self._memory_h = None
            self._queue = []
            self._sample_rng.manual_seed(0)
            return
        for i in np.asarray(env_indices, dtype=np.int64).reshape(-1):
            self._hist_valid[i] = False
            self._queue[i] = []
            if self._memory_h is not None:
                self._memory_h[i] = 0.0

    def _check_observation(self, observation: dict[str, Any]) -> int:
        """Validate a batched observation dict (ValueError naming the key); returns the batch size N."""
        instr = observation.get("instruction")
        if not isinstance(instr, (list, tuple)) or not all(isinstance(s, str) for s in instr):
            raise ValueError(f"instruction: expected a list of N strings, got {type(instr).__name__} {instr!r:.60}")
        n = len(instr)
        for key, needed in (("image", self.has_image), ("state", self.has_state)):
            if not needed:
                continue
            if key not in observation:
                raise ValueError(f"observation: expected key {key!r} for this policy (mark rows where it is missing "
                                 f"with {key}_present=False instead of leaving it out)")
            shape = tuple(np.shape(observation[key]))
            if not shape or shape[0] != n:
                raise ValueError(f"{key}: expected {n} rows (one per instruction), got shape {shape}")
        for m in MODALITIES:
            shape = tuple(np.shape(observation.get(f"{m}_present", np.zeros(n))))
            if shape != (n,):
                raise ValueError(f"{m}_present: expected shape ({n},), got {shape}")
        return n

    @torch.no_grad()
    def select_action(self, observation: dict[str, Any]) -> np.ndarray:
        """Batched acting: keeps the last ``history`` frames per env and a queue of chunked actions."""
        n = self._check_observation(observation)
        instr = list(observation["instruction"])
        t = self.cfg.history
        frames = {}
        if self.has_image:
            frames["image"] = torch.as_tensor(np.asarray(observation["image"]))
        if self.has_state:
            frames["state"] = torch.as_tensor(np.asarray(observation["state"], dtype=np.float32))
        if self._history is None or len(self._queue) != n:
            self._history = {k: v.unsqueeze(1).repeat(1, t, *([1] * (v.dim() - 1))) for k, v in frames.items()}
            self._hist_valid = torch.zeros(n, t, dtype=torch.bool)
            self._queue = [[] for _ in range(n)]
            self._memory_h = None
        if self.memory is not None:  # history 1, chunk 1: one memory step for every env
            return self._act_with_memory(observation, frames, instr, n)
        first = ~self._hist_valid.any(dim=1)  # (N,) envs on the first step of an episode
        lo = 1 if self.cfg.anchor_first else 0  # with anchor_first, slot 0 keeps the episode's first frame
        for k, v in frames.items():  # shift the window left, append the newest frame
            h = self._history[k]
            h[:, lo:-1] = h[:, lo + 1 :].clone()
            h[:, -1] = v
            if lo:
                h[first, 0] = v[first]
        self._hist_valid[:, lo:-1] = self._hist_valid[:, lo + 1 :].clone()
        self._hist_valid[:, -1] = True
        if lo:
            self._hist_valid[first, 0] = True
        need = [i for i in range(n) if not self._queue[i]]
        if need:
            idx = torch.as_tensor(need)
            batch: dict[str, Any] = {k: v[idx] for k, v in self._history.items()}
            batch["obs_mask"] = self._hist_valid[idx]
            batch["instruction"] = [instr[i] for i in need]
            for m in MODALITIES:
                if f"{m}_present" in observation:
                    batch[f"{m}_present"] = np.asarray(observation[f"{m}_present"])[need]
            chunk = self.predict_chunk(batch).cpu().numpy()  # (len(need), K[, A])
            for j, i in enumerate(need):
                self._queue[i] = list(chunk[j])
        actions = [self._queue[i].pop(0) for i in range(n)]
        return np.stack(actions).astype(np.int64 if self.head_kind == "discrete" else np.float32)

    def _act_with_memory(self, observation: dict[str, Any], frames: dict[str, torch.Tensor], instr: list[str],
                         n: int) -> np.ndarray:
        """One step of every env: fuse the current frame, advance each env's memory state, act."""
        batch: dict[str, Any] = {k: v.unsqueeze(1) for k, v in frames.items()}  # (N, 1, ...)
        batch["instruction"] = instr
        batch.update(_present_flags(observation))
        b = self.prepare(batch)
        if self._memory_h is None:
            self._memory_h = torch.zeros(n, self.cfg.d_model, device=self.device)
        fused, self._memory_h = self._remember(self.fusion(*self._fusion_inputs(self.encode(b))), None,
                                               self._memory_h)  # (N, D), (N, D)
        actions = self._pick(self.action_outputs(fused))[:, 0]  # (N,) | (N, A): chunk is 1 with a memory
        return actions.cpu().numpy().astype(np.int64 if self.head_kind == "discrete" else np.float32)


def _present_flags(observation: dict[str, Any], rows: list[int] | None = None) -> dict[str, np.ndarray]:
    out = {}
    for m in MODALITIES:
        if f"{m}_present" in observation:
            v = np.asarray(observation[f"{m}_present"])
            out[f"{m}_present"] = v if rows is None else v[rows]
    return out


def build_policy_from_checkpoint(cfg: PolicyConfig, extra: dict[str, Any]) -> VLAPolicy:
    spec = PolicySpec(**extra["spec"])
    tok = TextTokenizer.from_json(extra["tokenizer"]) if extra.get("tokenizer") else None
    return VLAPolicy(cfg, spec, tok, extra.get("temperature", 0.07), extra.get("learnable_temperature", True))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = ["VLAPolicy", "PolicySpec", "build_policy_from_checkpoint", "count_parameters"]
