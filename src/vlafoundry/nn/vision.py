"""Vision encoders: ViT-style patch embedding for RGB images and an embedding encoder for BabyAI's symbolic grid.

Both produce a token sequence ``(B, [1+]N, D)`` with fixed 2-D sine-cosine positions (MAE / ViT-MAE style):
the first ``D/2`` channels encode the row index, the last ``D/2`` the column index, each half being
``[sin(p * w_k), cos(p * w_k)]`` with ``w_k = 1 / 10000^(k / (D/4))``, ``k = 0 .. D/4 - 1``.
The positions are a pure function of the grid size, so they are cached per ``(grid_h, grid_w, device, dtype)``
and never stored in the ``state_dict``: any image size divisible by the patch size works.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from vlafoundry.nn._checks import check_tensor

__all__ = [
    "CELL_LABEL_CLASSES",
    "POSITION_LABEL_DIMS",
    "GRID_COLOR_NAMES",
    "GRID_COLOURED_OBJECTS",
    "GRID_OBJECT_NAMES",
    "ConvStem",
    "PatchMLPStem",
    "SinCosPositionCache",
    "SymbolicGridEncoder",
    "VisionEncoder",
    "get_1d_sincos_pos_embed",
    "get_2d_sincos_pos_embed",
    "images_to_tensor",
]

# The words an instruction uses for each index of MiniGrid's symbolic tables (minigrid.core.constants IDX_TO_OBJECT,
# IDX_TO_COLOR; a test checks they agree), aliases after the first. Read by the grounding loss
# (``loss.grounding``), which supervises each cell's match to the words the instruction names.
GRID_OBJECT_NAMES: tuple[tuple[str, ...], ...] = (
    ("unseen",), ("empty",), ("wall",), ("floor",), ("door",), ("key",), ("ball",), ("box",), ("goal",), ("lava",),
    ("agent",))
GRID_COLOR_NAMES: tuple[tuple[str, ...], ...] = (
    ("red",), ("green",), ("blue",), ("purple",), ("yellow",), ("grey", "gray"))
# The objects whose colour is their own and that instructions name by it (walls are always grey, empty cells carry
# colour index 0, goals are always green): the grounding loss supervises the colour match on these cells only.
GRID_COLOURED_OBJECTS: tuple[str, ...] = ("door", "key", "ball", "box")
# Per-cell label schemes of ``model.cell_labels`` / ``loss.cells``: the classes of each labelled attribute. ``minigrid``:
# the symbolic view's (object type, colour, state) of each tile of a BabyAI RGB frame
# (:class:`vlafoundry.envs.babyai_cells.MinigridTileDecoder` reads them from the pixels).
CELL_LABEL_CLASSES: dict[str, tuple[int, ...]] = {"minigrid": (len(GRID_OBJECT_NAMES), len(GRID_COLOR_NAMES), 3)}
#: Coordinates a ``model.position_labels`` head regresses from the frame, per scheme (``loss.positions``):
#: ``metaworld``, the first object's, the second object's and the goal's xyz (the state entries pixels leave out).
POSITION_LABEL_DIMS: dict[str, int] = {"metaworld": 9}


def get_1d_sincos_pos_embed(embed_dim: int, positions: np.ndarray | int) -> np.ndarray:
    """1-D sine-cosine embedding ``(M, embed_dim)`` of ``positions`` (an int ``M`` means ``0 .. M-1``).

    Layout: ``[sin(p * w_0) .. sin(p * w_{D/2-1}), cos(p * w_0) .. cos(p * w_{D/2-1})]`` with
    ``w_k = 10000^(-k / (D/2))``. Computed in float64.
    """
    if embed_dim <= 0 or embed_dim % 2 != 0:
        raise ValueError(f"embed_dim: expected a positive even integer, got {embed_dim}")
    pos = np.arange(positions, dtype=np.float64) if isinstance(positions, (int, np.integer)) else positions
    pos = np.asarray(pos, dtype=np.float64).reshape(-1)  # (M,)
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000.0**omega  # (D/2,)
    out = np.outer(pos, omega)  # (M, D/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # (M, D)


def get_2d_sincos_pos_embed(embed_dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> np.ndarray:
    """2-D sine-cosine positions for a ``grid_h x grid_w`` grid, row-major (the order of ``flatten(2)``).

    Returns a float64 array of shape ``(grid_h * grid_w, embed_dim)``, or ``(1 + grid_h * grid_w, embed_dim)``
    with an all-zero first row for a CLS token when ``cls_token`` is True. Channels ``[:D/2]`` encode the row
    (y) index, channels ``[D/2:]`` the column (x) index. ``embed_dim`` must be divisible by 4.
    """
    if embed_dim <= 0 or embed_dim % 4 != 0:
        raise ValueError(f"embed_dim: expected a positive multiple of 4 for 2-D sin-cos positions, got {embed_dim}")
    if grid_h <= 0 or grid_w <= 0:
        raise ValueError(f"grid size: expected positive grid_h and grid_w, got ({grid_h}, {grid_w})")
    rows, cols = np.meshgrid(np.arange(grid_h), np.arange(grid_w), indexing="ij")  # (H, W) each
    emb_row = get_1d_sincos_pos_embed(embed_dim // 2, rows.reshape(-1))  # (H*W, D/2)
    emb_col = get_1d_sincos_pos_embed(embed_dim // 2, cols.reshape(-1))  # (H*W, D/2)
    emb = np.concatenate([emb_row, emb_col], axis=1)  # (H*W, D)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)  # (1+H*W, D)
    return emb


class SinCosPositionCache:
    """Bounded LRU cache of 2-D sin-cos position tensors keyed by ``(grid_h, grid_w, device, dtype)``.

    Kept as a plain attribute (not a buffer), so it never enters a ``state_dict``; entries for a new
    device or dtype are built on first use, so the positions follow the module across ``.to()`` calls.
    """

    def __init__(self, embed_dim: int, cls_token: bool, max_entries: int = 16) -> None:
        self.embed_dim = embed_dim
        self.cls_token = cls_token
        self.max_entries = max_entries
        self._store: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self.misses = 0

    def get(self, grid_h: int, grid_w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Return the ``(1, [1+]H*W, D)`` positions for this grid (built once per key)."""
        key = (int(grid_h), int(grid_w), torch.device(device), dtype)
        pos = self._store.get(key)
        if pos is None:
            self.misses += 1
            table = get_2d_sincos_pos_embed(self.embed_dim, grid_h, grid_w, cls_token=self.cls_token)
            pos = torch.from_numpy(table).to(device=device, dtype=dtype).unsqueeze(0)  # (1, [1+]H*W, D)
            self._store[key] = pos
            while len(self._store) > self.max_entries:
                self._store.popitem(last=False)
        else:
            self._store.move_to_end(key)
        return pos

    def keys(self) -> list[tuple]:
        return list(self._store.keys())

    def clear(self) -> None:
        self._store.clear()

    def __len__(self) -> int:
        return len(self._store)


def images_to_tensor(images: torch.Tensor | np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convert uint8 channels-last images ``(B, H, W, C)`` (as environments and datasets give them) to
    float ``(B, C, H, W)`` in ``[0, 1]``."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    check_tensor("images", images, ndim=4, floating=None)
    if images.dtype != torch.uint8:
        raise ValueError(f"images: expected dtype torch.uint8 (B, H, W, C), got {images.dtype}")
    return images.permute(0, 3, 1, 2).to(dtype).div_(255.0)  # (B, C, H, W)


class ConvStem(nn.Module):
    """A small convolutional stem in place of the ViT's one-shot patch projection ("early convolutions",
    Xiao et al. 2021): ``log2(patch_size)`` 3x3 stride-2 convolutions (GroupNorm + ``act_layer``), then a 1x1
    projection to ``d_model``. Same token grid as a ``patch_size`` patch embedding; ``patch_size`` must be a power
    of two. ``(B, C, H, W)`` -> ``(B, D, H/p, W/p)``."""

    def __init__(self, input_channels: int, patch_size: int, d_model: int, width: int = 32,
                 act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        if patch_size < 2 or patch_size & (patch_size - 1):
            raise ValueError(f"patch_size: expected a power of two >= 2 for the convolutional stem, got {patch_size}")
        layers: list[nn.Module] = []
        ch_in, ch = input_channels, width
        for _ in range(patch_size.bit_length() - 1):
            layers += [nn.Conv2d(ch_in, ch, 3, stride=2, padding=1, bias=False), nn.GroupNorm(1, ch), act_layer()]
            ch_in, ch = ch, min(2 * ch, d_model)
        layers.append(nn.Conv2d(ch_in, d_model, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, D, H/p, W/p)


class PatchMLPStem(nn.Module):
    """A per-patch MLP in place of the ViT's linear patch projection: the ``patch_size`` patch projection, then
    ``act_layer`` and a 1x1 (per-token) linear layer, so each token is a non-linear function of its own patch
    only (a patch's content, e.g. which object a grid tile draws, need not be linear in its pixels).
    ``(B, C, H, W)`` -> ``(B, D, H/p, W/p)``."""

    def __init__(self, input_channels: int, patch_size: int, d_model: int,
                 act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.proj = nn.Conv2d(input_channels, d_model, kernel_size=patch_size, stride=patch_size)
        self.act = act_layer()
        self.fc = nn.Conv2d(d_model, d_model, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.proj(x)))  # (B, D, H/p, W/p)


STEMS = ("patch", "conv", "mlp")


class VisionEncoder(nn.Module):
    """ViT patch embedding: ``Conv2d`` patches + learned CLS token + fixed 2-D sin-cos positions.

    ``forward(x)`` takes float images ``(B, C, H, W)``; ``H`` and ``W`` must be multiples of ``patch_size``
    (any such size works, positions are built per grid). With ``channels_last_uint8=True`` (or any uint8
    input, which is always read as channels-last) it takes raw ``(B, H, W, C)`` uint8 images and scales them
    to ``[0, 1]`` first (see :func:`images_to_tensor`). Returns ``(B, 1 + H/p * W/p, D)``; token 0 is CLS.

    ``stem``: ``"patch"`` (the chapter's one strided convolution), ``"conv"`` (:class:`ConvStem`) or ``"mlp"``
    (:class:`PatchMLPStem`, the patch projection then a per-token MLP layer).
    ``norm_layer``: applied to each patch token before the positions are added (timm's ``PatchEmbed`` option; e.g.
    ``nn.LayerNorm``): a patch's content then has unit scale from the first step, as a learned embedding has, however
    dark or sparse the pixels are.
    ``num_cameras`` K > 1: the input is ``(B, K, H, W, C)`` uint8 (or ``(B, K, C, H, W)`` float), every camera
    goes through the same stem and gets its own CLS token, and a learned camera embedding is added to all of
    camera k's tokens; the output is the K token groups one after the other, ``(B, K * (1 + H/p * W/p), D)``.
    """

    def __init__(self, input_channels: int = 3, patch_size: int = 16, d_model: int = 768, dropout: float = 0.0,
                 stem: str = "patch", num_cameras: int = 1, norm_layer: type[nn.Module] | None = None) -> None:
        super().__init__()
        if d_model % 4 != 0:
            raise ValueError(f"d_model: expected a multiple of 4 (2-D sin-cos positions), got {d_model}")
        if patch_size <= 0:
            raise ValueError(f"patch_size: expected a positive integer, got {patch_size}")
        if stem not in STEMS:
            raise ValueError(f"stem: expected one of {list(STEMS)}, got {stem!r}")
        if num_cameras < 1:
            raise ValueError(f"num_cameras: expected an integer >= 1, got {num_cameras}")
        self.input_channels = input_channels
        self.patch_size = patch_size
        self.d_model = d_model
        self.stem = stem
        self.num_cameras = num_cameras
        if stem == "patch":
            self.conv_proj = nn.Conv2d(input_channels, d_model, kernel_size=patch_size, stride=patch_size)
        elif stem == "mlp":
            self.conv_proj = PatchMLPStem(input_channels, patch_size, d_model)
        else:
            self.conv_proj = ConvStem(input_channels, patch_size, d_model)
        self.norm = norm_layer(d_model) if norm_layer is not None else nn.Identity()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.camera_embed = nn.Parameter(torch.zeros(num_cameras, d_model)) if num_cameras > 1 else None
        self.pos_drop = nn.Dropout(dropout)
        self.pos_cache = SinCosPositionCache(d_model, cls_token=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.stem == "patch":
            # MAE: the patch projection is initialised like a Linear layer (xavier on the flattened kernel).
            w = self.conv_proj.weight.data
            nn.init.xavier_uniform_(w.view(w.shape[0], -1))
            nn.init.zeros_(self.conv_proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        if self.camera_embed is not None:
            nn.init.normal_(self.camera_embed, std=0.02)

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.cls_token.dtype

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid ``(H/p, W/p)`` for an image size; ``ValueError`` if not divisible."""
        p = self.patch_size
        if height % p != 0 or width % p != 0 or height < p or width < p:
            raise ValueError(
                f"x: image size ({height}, {width}) must be a positive multiple of patch_size={p} in both dimensions"
            )
        return height // p, width // p

    def num_tokens(self, height: int, width: int) -> int:
        """Tokens per observation: ``K * (1 + H/p * W/p)``."""
        gh, gw = self.grid_size(height, width)
        return self.num_cameras * (1 + gh * gw)

    def positions(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """What is added to the stem's tokens: ``(1, K * (1 + N), D)`` sin-cos positions (+ camera embeddings)."""
        pos = self.pos_cache.get(*self.grid_size(height, width), device, dtype)  # (1, 1+N, D)
        if self.camera_embed is None:
            return pos
        cams = self.camera_embed.to(dtype).unsqueeze(1)  # (K, 1, D)
        return (pos + cams).reshape(1, -1, self.d_model)  # (1, K*(1+N), D)

    def forward(self, x: torch.Tensor, channels_last_uint8: bool | None = None) -> torch.Tensor:
        k = self.num_cameras
        check_tensor("x", x, ndim=4 if k == 1 else 5, floating=None)
        b = x.shape[0]
        if k > 1:
            if x.shape[1] != k:
                raise ValueError(f"x: expected {k} cameras (B, K, H, W, C), got shape {tuple(x.shape)}")
            x = x.reshape(b * k, *x.shape[2:])  # (B*K, H, W, C) or (B*K, C, H, W)
        if channels_last_uint8 is None:
            channels_last_uint8 = x.dtype == torch.uint8
        if channels_last_uint8:
            x = images_to_tensor(x, dtype=self.weight_dtype)  # (B*K, C, H, W)
        else:
            check_tensor("x", x, floating=True)
        if x.shape[1] != self.input_channels:
            raise ValueError(f"x: expected {self.input_channels} channels (B, C, H, W), got shape {tuple(x.shape)}")
        check_tensor("x", x, device=self.cls_token.device)
        self.grid_size(x.shape[2], x.shape[3])
        patches = self.norm(self.conv_proj(x).flatten(2).transpose(1, 2))  # (B*K, N, D)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B*K, 1, D)
        tokens = torch.cat([cls, patches], dim=1).reshape(b, -1, self.d_model)  # (B, K*(1+N), D)
        tokens = tokens + self.positions(x.shape[2], x.shape[3], tokens.device, tokens.dtype)
        return self.pos_drop(tokens)


class SymbolicGridEncoder(nn.Module):
    """Tokens for BabyAI / MiniGrid's symbolic view ``(B, H, W, 3)`` of (object, colour, state) indices.

    Each cell becomes ``E_obj[o] + E_col[c] + E_state[s] + pos(row, col)`` (2-D sin-cos positions), giving
    ``(B, H*W, D)`` tokens, with a learned CLS token in front (position zero) when ``cls_token``: 50 tokens
    for the 7x7 egocentric view. Defaults match MiniGrid's tables (11 objects, 6 colours, 3 door states);
    use ``num_states=4`` for fully observed grids, where the agent cell stores its direction (0-3).
    Out-of-range indices raise ``ValueError``.
    """

    def __init__(
        self,
        d_model: int,
        num_objects: int = 11,
        num_colors: int = 6,
        num_states: int = 3,
        cls_token: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if d_model % 4 != 0:
            raise ValueError(f"d_model: expected a multiple of 4 (2-D sin-cos positions), got {d_model}")
        self.d_model = d_model
        self.num_objects, self.num_colors, self.num_states = num_objects, num_colors, num_states
        self.object_embed = nn.Embedding(num_objects, d_model)
        self.color_embed = nn.Embedding(num_colors, d_model)
        self.state_embed = nn.Embedding(num_states, d_model)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model)) if cls_token else None
        self.pos_drop = nn.Dropout(dropout)
        self.pos_cache = SinCosPositionCache(d_model, cls_token=cls_token)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Each table ~ N(0, 1/3) so the summed cell embedding has unit variance per channel, the same
        # scale as the sin-cos positions (mean square 1/2).
        for emb in (self.object_embed, self.color_embed, self.state_embed):
            nn.init.normal_(emb.weight, std=3.0**-0.5)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    def num_tokens(self, height: int = 7, width: int = 7) -> int:
        return height * width + (1 if self.cls_token is not None else 0)

    @property
    def attribute_names(self) -> tuple[tuple[tuple[str, ...], ...], ...]:
        """The words for each value of the attributes :meth:`attribute_embeddings` returns (object type, colour),
        MiniGrid's, when this encoder's tables are MiniGrid's size; otherwise ``ValueError``."""
        if (self.num_objects, self.num_colors) != (len(GRID_OBJECT_NAMES), len(GRID_COLOR_NAMES)):
            raise ValueError(f"attribute names: known for MiniGrid's tables ({len(GRID_OBJECT_NAMES)} objects, "
                             f"{len(GRID_COLOR_NAMES)} colours), got {self.num_objects} objects, "
                             f"{self.num_colors} colours")
        return GRID_OBJECT_NAMES, GRID_COLOR_NAMES

    def coloured_objects(self) -> torch.Tensor:
        """(num_objects,) bool: object types whose cells' colour the grounding loss supervises."""
        names = self.attribute_names[0]
        return torch.tensor([n[0] in GRID_COLOURED_OBJECTS for n in names], device=self.object_embed.weight.device)

    def _check_range(self, name: str, idx: torch.Tensor, n: int) -> None:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= n:
            raise ValueError(f"grid: {name} index out of range, expected values in [0, {n - 1}], got [{lo}, {hi}]")

    def _indices(self, grid: torch.Tensor | np.ndarray) -> torch.Tensor:
        """A checked grid of (object, colour, state) indices -> int64 on the tables' device, (B, H, W, 3)."""
        if isinstance(grid, np.ndarray):
            grid = torch.from_numpy(grid)
        check_tensor("grid", grid, ndim=4, last_dim=3, floating=False)
        if grid.dtype == torch.bool:
            raise ValueError("grid: expected integer (object, colour, state) indices, got dtype torch.bool")
        grid = grid.to(self.object_embed.weight.device, torch.long)  # (B, H, W, 3)
        if grid.numel() > 0:
            self._check_range("object", grid[..., 0], self.num_objects)
            self._check_range("colour", grid[..., 1], self.num_colors)
            self._check_range("state", grid[..., 2], self.num_states)
        return grid

    def forward(self, grid: torch.Tensor | np.ndarray) -> torch.Tensor:
        grid = self._indices(grid)  # (B, H, W, 3)
        b, h, w, _ = grid.shape
        cells = self.object_embed(grid[..., 0]) + self.color_embed(grid[..., 1]) + self.state_embed(grid[..., 2])
        tokens = cells.reshape(b, h * w, self.d_model)  # (B, H*W, D)
        if self.cls_token is not None:
            tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)  # (B, 1+H*W, D)
        tokens = tokens + self.pos_cache.get(h, w, tokens.device, tokens.dtype)
        return self.pos_drop(tokens)

    def attribute_tables(self) -> list[torch.Tensor]:
        """The object-type and colour embedding tables, ``[(num_objects, D), (num_colors, D)]``: rows of them are
        :meth:`attribute_embeddings`."""
        return [self.object_embed.weight, self.color_embed.weight]

    def attribute_indices(self, grid: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Each cell's (object, colour) indices into :meth:`attribute_tables`: (B, H*W, 2) int64 (no CLS slot)."""
        grid = self._indices(grid)  # (B, H, W, 3)
        return grid[..., :2].reshape(grid.shape[0], -1, 2)

    def attribute_embeddings(self, grid: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        """Each cell's object-type and colour embeddings apart: ``[(B, N, D), (B, N, D)]``, N the encoder's token
        count (zeros at the CLS slot), for :class:`~vlafoundry.nn.matching.AttributeMatching`."""
        grid = self._indices(grid)  # (B, H, W, 3)
        b, h, w, _ = grid.shape
        out = []
        for table, idx in ((self.object_embed, grid[..., 0]), (self.color_embed, grid[..., 1])):
            a = table(idx).reshape(b, h * w, self.d_model)  # (B, H*W, D)
            if self.cls_token is not None:
                a = torch.cat([a.new_zeros(b, 1, self.d_model), a], dim=1)  # (B, 1+H*W, D)
            out.append(a)
        return out
