"""Per-cell labels for BabyAI's egocentric RGB frames: the symbolic view, read back from the pixels.

Minigrid draws each cell of an egocentric frame as one ``tile_size`` x ``tile_size`` tile that is a pure function
of the cell's (object type, colour, state) and of whether the agent sees the cell (seen cells are drawn
highlighted). :class:`MinigridTileDecoder` renders every tile Minigrid can draw, with Minigrid's own renderer, into a
lookup table, and maps each tile of a frame back to the symbolic view's (object, colour, state) triple: highlighted
tiles to their object (the agent's own cell, drawn as its triangle, to ``empty``, as the symbolic view has it),
unhighlighted tiles to ``unseen`` (0, 0, 0). On frames from :class:`~vlafoundry.envs.babyai.BabyAIEnv` the result
equals the env's symbolic view exactly (a test checks it on generated episodes); a tile the table does not hold (a
frame from another renderer, a corrupted pixel) gets -1 in all three channels, which the cell loss ignores.

These are the labels of ``loss.cells`` (:meth:`vlafoundry.models.objectives.VLAObjectives.cell_loss`): a pixel
policy's patch tokens learn to say what each tile shows, the symbols the grid policy is handed. They are read from
stored frames, so any BabyAI RGB dataset has them, without storing a second observation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Label triples per cell: object type, colour, state (Minigrid's ``OBJECT_TO_IDX``, ``COLOR_TO_IDX``,
#: ``STATE_TO_IDX``; sizes 11, 6, 3).
CELL_ATTRIBUTES = ("object", "colour", "state")
UNKNOWN = -1
# Minigrid draws these in a fixed colour, or in their colour index's colour but only ever places them in this one
# (a green wall would draw a goal's tile): their label's colour.
CANONICAL_COLOURS = {"wall": "grey", "goal": "green", "lava": "red"}


def _tile_table(tile_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every tile Minigrid draws at ``tile_size``: ``(keys (M,) void, labels (M, 3) int16)``, keys the raw bytes
    of a (tile, tile, 3) uint8 tile. Objects Minigrid draws in one colour whatever their colour index (walls, goals,
    lava) enter with the colour its levels give them; a tile two labels draw is labelled -1 (none in practice)."""
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX
    from minigrid.core.grid import Grid
    from minigrid.core.world_object import WorldObj

    table: dict[bytes, tuple[int, int, int]] = {}
    ambiguous = (UNKNOWN, UNKNOWN, UNKNOWN)

    def add(tile: np.ndarray, label: tuple[int, int, int]) -> None:
        key = np.ascontiguousarray(tile, dtype=np.uint8).tobytes()
        if table.setdefault(key, label) != label:
            table[key] = ambiguous  # two labels draw this tile: it says neither

    empty = (OBJECT_TO_IDX["empty"], 0, 0)
    for highlight in (True, False):
        label_of = (lambda lab: lab) if highlight else (lambda lab: (0, 0, 0))
        add(Grid.render_tile(None, agent_dir=None, highlight=highlight, tile_size=tile_size), label_of(empty))
        # the agent's own cell: its triangle (pointing up in an egocentric frame) over an empty cell
        add(Grid.render_tile(None, agent_dir=3, highlight=highlight, tile_size=tile_size), label_of(empty))
        for name, type_idx in OBJECT_TO_IDX.items():
            if name in ("unseen", "empty", "agent"):
                continue
            states = STATE_TO_IDX.values() if name == "door" else (0,)
            colours = [COLOR_TO_IDX[CANONICAL_COLOURS[name]]] if name in CANONICAL_COLOURS else COLOR_TO_IDX.values()
            for colour_idx in colours:
                for state in states:
                    obj = WorldObj.decode(type_idx, colour_idx, state)
                    if obj is None:
                        continue
                    label = obj.encode()  # the symbolic view's triple for this object
                    add(Grid.render_tile(obj, agent_dir=None, highlight=highlight, tile_size=tile_size),
                        label_of(tuple(int(v) for v in label)))
    keys = np.array(list(table), dtype=f"V{tile_size * tile_size * 3}")
    labels = np.array(list(table.values()), dtype=np.int16)
    order = np.argsort(keys)
    return keys[order], labels[order]


class MinigridTileDecoder:
    """Egocentric RGB frames ``(..., R*t, C*t, 3)`` uint8 -> the symbolic view's labels ``(..., R, C, 3)`` int16
    (object, colour, state per cell, rows and columns as in the image; -1 where a tile is unknown).

    Args:
        tile_size: pixels per cell ``t`` (``BabyAIEnv``'s ``tile_size``, 8 by default).
    """

    def __init__(self, tile_size: int = 8) -> None:
        if not isinstance(tile_size, (int, np.integer)) or tile_size < 1:
            raise ValueError(f"tile_size: expected a positive integer, got {tile_size!r}")
        self.tile_size = int(tile_size)
        self._keys, self._labels = _tile_table(self.tile_size)

    def __len__(self) -> int:
        return len(self._keys)

    def __call__(self, frames: Any) -> np.ndarray:
        frames = np.asarray(frames)
        t = self.tile_size
        if frames.dtype != np.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
            raise ValueError(f"frames: expected uint8 RGB (..., H, W, 3), got dtype {frames.dtype} shape "
                             f"{tuple(frames.shape)}")
        h, w = frames.shape[-3:-1]
        if h % t or w % t or h == 0 or w == 0:
            raise ValueError(f"frames: expected height and width multiples of tile_size={t}, got {h}x{w}")
        lead = frames.shape[:-3]
        rows, cols = h // t, w // t
        tiles = frames.reshape(-1, rows, t, cols, t, 3).transpose(0, 1, 3, 2, 4, 5)  # (N, R, C, t, t, 3)
        keys = np.ascontiguousarray(tiles).reshape(-1, t * t * 3).view(self._keys.dtype).reshape(-1)  # (N*R*C,)
        pos = np.searchsorted(self._keys, keys).clip(0, len(self._keys) - 1)
        hit = self._keys[pos] == keys
        out = np.where(hit[:, None], self._labels[pos], np.int16(UNKNOWN))  # (N*R*C, 3)
        return out.reshape(*lead, rows, cols, 3)


_DECODERS: dict[int, MinigridTileDecoder] = {}


def tile_decoder(tile_size: int) -> MinigridTileDecoder:
    """The decoder for ``tile_size`` (built once per process)."""
    if tile_size not in _DECODERS:
        _DECODERS[tile_size] = MinigridTileDecoder(tile_size)
    return _DECODERS[tile_size]


__all__ = ["CELL_ATTRIBUTES", "UNKNOWN", "MinigridTileDecoder", "tile_decoder"]
