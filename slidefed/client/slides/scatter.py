"""A grid of regions read by decoding each stored tile once and scattering it.

The regions of a tile grid rarely line up with the stored tiles (224-px tiles
over 256-px stored tiles: up to four stored tiles under each region, each
stored tile under up to four regions). Holding decoded stored tiles until the
last region that needs them means every decode writes to memory that left the
CPU cache long ago. :func:`scatter_batches` turns it round: each stored tile
is decoded into one scratch buffer (:mod:`~slidefed.client.slides.scratch`),
which stays in the cache, and its parts
are copied at once into every region over it, the regions of later batches
included. What is held is output: the batches that have been written into
but are not complete yet (about two rows of regions for a grid read row by
row), never more than a byte budget. A region of a batch beyond the budget is
filled when its batch comes, decoding its stored tiles again.

Batches come in order, each complete, with the regions that failed (a stored
tile that cannot be read fails every region over it). The pixels are those of
:meth:`StoredTileReader.read_level_region` bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from slidefed.client.slides.base import READ_ERRORS
from slidefed.client.slides.scratch import decode_into_scratch
from slidefed.client.slides.stored_tiles import StoredTileReader
from slidefed.client.slides.tile_plan import TileKey, tile_span
from slidefed.common.errors import SlideDecodeRefused, SlideReadError

#: A part of a stored tile and where it goes: (batch, slot, source rows,
#: source columns, destination rows, destination columns).
_Piece = tuple["_Batch", int, slice, slice, slice, slice]


@dataclass
class _Batch:
    """One batch of regions: its array (made at the first write), what is left."""

    index: int
    size: int
    pieces_left: int = 0
    array: NDArray[np.uint8] | None = None
    errors: dict[int, SlideReadError] = field(default_factory=dict)
    blank: list[int] = field(default_factory=list)


class _Scatter:
    """The state of one :func:`scatter_batches` pass (see the module docstring)."""

    def __init__(
        self,
        reader: StoredTileReader,
        level: int,
        locations: Sequence[tuple[int, int]],
        size: int,
        batch_size: int,
        alloc: Callable[[int], NDArray[np.uint8]],
    ) -> None:
        geometry = reader.stored_tile_size(level)
        if geometry is None:
            raise ValueError(f"level {level} has no stored tiles")
        self.reader, self.level, self.size = reader, level, size
        self.geometry = geometry
        self.locations, self.batch_size, self.alloc = locations, batch_size, alloc
        self.width, self.height = reader.level_dimensions[level]
        # Pieces still to copy, by stored tile, in batch order.
        self.pending: dict[TileKey, list[_Piece]] = {}
        tw, th = geometry
        self.scratch_shape = (th, tw, 3)

    def batch(self, index: int) -> _Batch:
        """Batch ``index``, its pieces registered under their stored tiles."""
        start = index * self.batch_size
        chunk = self.locations[start : start + self.batch_size]
        batch = _Batch(index=index, size=len(chunk))
        tw, th = self.geometry
        s = self.size
        for slot, (lx, ly) in enumerate(chunk):
            x0, y0 = max(lx, 0), max(ly, 0)
            x1, y1 = min(lx + s, self.width), min(ly + s, self.height)
            if x0 > lx or y0 > ly or x1 < lx + s or y1 < ly + s:
                batch.blank.append(slot)  # pixels outside the level are black
            if x0 >= x1 or y0 >= y1:
                continue
            cols, rows = tile_span(self.geometry, (x0, y0, x1, y1))
            for ty in rows:
                sy0, sy1 = max(y0, ty * th), min(y1, (ty + 1) * th)
                src_rows = slice(sy0 - ty * th, sy1 - ty * th)
                dst_rows = slice(sy0 - ly, sy1 - ly)
                for tx in cols:
                    sx0, sx1 = max(x0, tx * tw), min(x1, (tx + 1) * tw)
                    piece = (
                        batch,
                        slot,
                        src_rows,
                        slice(sx0 - tx * tw, sx1 - tx * tw),
                        dst_rows,
                        slice(sx0 - lx, sx1 - lx),
                    )
                    self.pending.setdefault((self.level, tx, ty), []).append(piece)
                    batch.pieces_left += 1
        return batch

    def array(self, batch: _Batch) -> NDArray[np.uint8]:
        """The batch's array, made (blank slots zeroed) at its first write."""
        if batch.array is None:
            batch.array = self.alloc(batch.size)
            for slot in batch.blank:
                batch.array[slot] = 0
        return batch.array

    def fill(self, key: TileKey) -> None:
        """Decode stored tile ``key`` once and copy it into every region over it."""
        pieces = self.pending.pop(key)
        try:
            tile = decode_into_scratch(
                self.scratch_shape, lambda into: self.reader.decode_counted(key, into)
            )
        except SlideDecodeRefused:
            raise
        except SlideReadError as exc:
            self._fail(pieces, exc)
            return
        except READ_ERRORS as exc:
            self._fail(pieces, exc)
            return
        for batch, slot, src_rows, src_cols, dst_rows, dst_cols in pieces:
            batch.pieces_left -= 1
            if slot not in batch.errors:
                out = self.array(batch)
                out[slot, dst_rows, dst_cols] = tile[src_rows, src_cols]

    def _fail(self, pieces: list[_Piece], exc: BaseException) -> None:
        """Fail every region over a stored tile that could not be read."""
        for batch, slot, *_ in pieces:
            batch.pieces_left -= 1
            if slot not in batch.errors:
                batch.errors[slot] = self._error(batch, slot, exc)

    def _error(self, batch: _Batch, slot: int, exc: BaseException) -> SlideReadError:
        """The error of one region, as a region read would have raised it."""
        if isinstance(exc, SlideReadError):
            return exc
        lx, ly = self.locations[batch.index * self.batch_size + slot]
        return self.reader.region_error(self.level, lx, ly, exc)

    def keys_of(self, batch: _Batch) -> list[TileKey]:
        """The stored tiles the batch still needs, row by row."""
        return sorted(
            (k for k, pieces in self.pending.items() if pieces[0][0] is batch),
            key=lambda k: (k[2], k[1]),
        )


def scatter_batches(
    reader: StoredTileReader,
    level: int,
    locations: Sequence[tuple[int, int]],
    size: int,
    batch_size: int,
    *,
    alloc: Callable[[int], NDArray[np.uint8]],
    budget: int,
) -> Iterator[tuple[NDArray[np.uint8], dict[int, SlideReadError]]]:
    """Read ``size`` x ``size`` regions of ``level`` at ``locations``, in batches.

    Parameters
    ----------
    reader : StoredTileReader
        The open slide; ``level`` must have stored tiles.
    level : int
        Pyramid level.
    locations : sequence of (int, int)
        Top-left (x, y) of each region, in ``level`` pixels.
    size : int
        Side of a region.
    batch_size : int
        Regions per batch (the last batch may be shorter).
    alloc : callable
        ``alloc(n)`` gives an (n, size, size, 3) uint8 array to fill.
    budget : int
        Bytes of incomplete batches that may be held ahead of the one to come.

    Yields
    ------
    (numpy.ndarray, dict)
        Each batch's array and, by slot, the error of each region that could
        not be read (its slot's pixels are then undefined).

    Raises
    ------
    SlideDecodeRefused
        If a stored tile declares more pixels than allowed.
    """
    state = _Scatter(reader, level, locations, size, batch_size, alloc)
    n_batches = -(-len(locations) // batch_size)
    ahead = max(budget // max(batch_size * size * size * 3, 1), 1)
    batches: dict[int, _Batch] = {}
    for index in range(n_batches):
        for later in range(index, min(index + ahead, n_batches)):
            if later not in batches:
                batches[later] = state.batch(later)
        batch = batches.pop(index)
        start = index * batch_size
        span = (size, size)
        reader.prefetch(
            level, [(xy, span) for xy in locations[start : start + batch_size]]
        )
        for key in state.keys_of(batch):
            state.fill(key)
        if batch.pieces_left:  # pragma: no cover - every piece is in pending
            raise AssertionError("a batch was left incomplete")
        yield state.array(batch), batch.errors


__all__ = ["scatter_batches"]
