"""Reads announced in advance, so that each stored tile under them is decoded once.

A tile grid knows every region it will read before the first one. A
:class:`TilePlan` counts, for each stored tile, how many of those reads need
it; a decoded tile is held while later reads still need it and dropped at its
last use. The tiles held are thus exactly the tiles still to be used (about
one row of stored tiles for a grid read row by row), and no tile is decoded
twice as long as they fit in the budget. Past the budget, newly decoded tiles
are not held (they are decoded again when next needed) rather than evicting
tiles about to be used: a grid read row by row is a loop over the same tiles,
where least-recently-used eviction would throw out every tile before its reuse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
from numpy.typing import NDArray

TileKey = tuple[int, int, int]  # (level, tx, ty)
Corners = tuple[int, int, int, int]  # (x0, y0, x1, y1) in level pixels


def tile_span(geometry: tuple[int, int], corners: Corners) -> tuple[range, range]:
    """Columns and rows of the stored tiles of ``geometry`` under ``corners``."""
    tw, th = geometry
    x0, y0, x1, y1 = corners
    return range(x0 // tw, (x1 - 1) // tw + 1), range(y0 // th, (y1 - 1) // th + 1)


def count_uses(
    level: int, geometry: tuple[int, int], regions: Iterable[Corners]
) -> dict[TileKey, int]:
    """How many of ``regions`` (clipped corners) need each stored tile of ``level``."""
    uses: dict[TileKey, int] = {}
    for corners in regions:
        cols, rows = tile_span(geometry, corners)
        for ty in rows:
            for tx in cols:
                key = (level, tx, ty)
                uses[key] = uses.get(key, 0) + 1
    return uses


class TilePlan:
    """The stored tiles announced reads still need, and those held for them.

    Parameters
    ----------
    uses : dict
        Reads still to come that need each stored tile (see :func:`count_uses`).
    budget : int
        Bytes of decoded tiles the plan may hold.
    decode : callable
        Decodes the stored tile of a key (and counts it), into the array given
        when it has the tile's shape.

    Notes
    -----
    A tile given out for its last use is decoded over by the next tile the
    plan decodes (its memory is still in the CPU cache; fresh memory is not):
    callers copy what they need from a tile before they ask for the next.
    """

    def __init__(
        self,
        uses: dict[TileKey, int],
        budget: int,
        decode: Callable[[TileKey, NDArray[np.uint8] | None], NDArray[np.uint8]],
    ) -> None:
        self.uses = uses
        self.budget = budget
        self._decode = decode
        self._held: dict[TileKey, NDArray[np.uint8]] = {}
        self.held_bytes = 0
        self._spent: NDArray[np.uint8] | None = None

    def __contains__(self, key: TileKey) -> bool:
        return key in self.uses

    def take(self, key: TileKey, make_room: Callable[[int], int]) -> NDArray[np.uint8]:
        """The tile of ``key`` for one announced read (decoded if not held).

        A tile that later reads need is held if it fits in the budget, with
        what ``make_room(nbytes)`` leaves of it: the reader's other cached
        tiles are given up first (``make_room`` evicts them as needed and
        returns the bytes they still take).
        """
        left = self.uses[key] - 1
        tile = self._held.get(key)
        if left <= 0:
            del self.uses[key]
            if tile is None:
                tile = self._decode_next(key)
            else:
                del self._held[key]
                self.held_bytes -= tile.nbytes
            self._spent = tile
            return tile
        self.uses[key] = left
        if tile is None:
            tile = self._decode_next(key)
            need = self.held_bytes + tile.nbytes
            if need <= self.budget and need + make_room(need) <= self.budget:
                self._held[key] = tile
                self.held_bytes += tile.nbytes
        return tile

    def _decode_next(self, key: TileKey) -> NDArray[np.uint8]:
        """Decode a tile, over the last one given out for its last use."""
        spent, self._spent = self._spent, None
        return self._decode(key, spent)

    def consume(self, key: TileKey) -> None:
        """One announced read of ``key`` was served another way."""
        left = self.uses.get(key, 0) - 1
        if left <= 0:
            self.uses.pop(key, None)
            tile = self._held.pop(key, None)
            if tile is not None:
                self.held_bytes -= tile.nbytes
        else:
            self.uses[key] = left

    def held(self, key: TileKey) -> bool:
        """Whether the tile of ``key`` is held."""
        return key in self._held

    def close(self) -> None:
        """Drop every tile still held (reads that failed or never came)."""
        self._held.clear()
        self.held_bytes = 0
        self.uses.clear()
        self._spent = None


__all__ = ["Corners", "TileKey", "TilePlan", "count_uses", "tile_span"]
