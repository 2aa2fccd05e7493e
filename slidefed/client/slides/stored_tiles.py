"""Regions cut from a slide's decoded stored tiles, with a bounded tile cache.

Pixels are read from the stored tiles directly: a reader decodes the bytes of
one stored tile (the TIFF reader reads them with ``os.pread`` and decodes them
with imagecodecs), and a region is cut from the decoded tiles it overlaps.
Decoded tiles are kept in a small least-recently-used cache bounded in bytes,
so that neighbouring regions (a row of tiles, a full-width NDPI band) decode
each stored tile once, and memory stays bounded whatever the slide size. A
caller that knows its regions in advance (a tile grid) announces them with
:meth:`StoredTileReader.planned_reads`: each stored tile is then kept exactly
until the last region that needs it, and dropped at once after, so that the
cache holds only tiles still to be used and a grid decodes each stored tile
once even where the tiles of a row would not all fit. Each
reader checks a stored tile's own header before decoding it
(:mod:`~slidefed.client.slides.bounds`), so that no tile decodes to more pixels
than the file declares or the site's cap allows.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
from cachetools import LRUCache
from numpy.typing import NDArray

from slidefed.client.slides.base import READ_ERRORS
from slidefed.client.slides.pixels import box_reduce
from slidefed.client.slides.tile_plan import (
    Corners,
    TileKey,
    TilePlan,
    count_uses,
    tile_span,
)
from slidefed.common.errors import SlideReadError

#: Bytes of decoded stored tiles one open slide keeps (per process).
TILE_CACHE_BYTES = 128 * 1024 * 1024


def tile_cache(budget: int) -> LRUCache[TileKey, NDArray[np.uint8]]:
    """Decoded stored tiles, least recently used first out, bounded in bytes.

    A tile larger than the whole budget is still kept, alone: it counts as the
    full budget, so storing it evicts every other tile and the next tile
    stored evicts it.
    """
    maxsize = max(budget, 1)

    def size(tile: NDArray[np.uint8]) -> int:
        return min(int(tile.nbytes), maxsize)

    return LRUCache(maxsize=maxsize, getsizeof=size)


class StoredTileReader:
    """Regions cut from decoded stored tiles; subclasses say how to decode one.

    Subclasses implement :meth:`_tile_geometry` (stored tile size of a level, or
    None where a level has to be read another way), :meth:`_decode_tile` and
    :meth:`_fallback_region`, and set ``path``.
    """

    path: Path

    def __init__(self, cache_bytes: int = TILE_CACHE_BYTES) -> None:
        self._cache = tile_cache(cache_bytes)
        self.tiles_decoded = 0
        # While reads are planned (see planned_reads): the tiles they still need.
        self._plan: TilePlan | None = None
        # Set by subclasses once the file is open: (w, h) and downsample per level.
        self._dims: list[tuple[int, int]] = []
        self._downsamples: list[float] = []

    def close(self) -> None:
        """Release file handles (subclasses close their reader)."""
        self._cache.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self._dims)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of each level."""
        return list(self._dims)

    @property
    def level_downsamples(self) -> list[float]:
        """Downsample of each level relative to level 0."""
        return list(self._downsamples)

    # -- to implement

    def _tile_geometry(self, level: int) -> tuple[int, int] | None:
        raise NotImplementedError

    def _decode_tile(
        self, level: int, tx: int, ty: int, out: NDArray[np.uint8] | None = None
    ) -> NDArray[np.uint8]:
        raise NotImplementedError

    def _fallback_region(
        self, level: int, x: int, y: int, w: int, h: int
    ) -> NDArray[np.uint8]:
        raise NotImplementedError

    # -- shared
    def prefetch(
        self,
        level: int,
        regions: Iterable[tuple[tuple[int, int], tuple[int, int]]],
    ) -> None:
        """Hint: these (location, size) regions of ``level`` are read next.

        Files need nothing; a reader of a remote archive fetches their stored
        tiles in a few batched requests instead of one request per tile.
        """

    def clear_cache(self) -> None:
        """Forget the decoded stored tiles (benchmarks start cold with it)."""
        self._cache.clear()

    def stored_tile_size(self, level: int) -> tuple[int, int] | None:
        """(width, height) of the stored tiles of ``level``, None if not tiled."""
        return self._tile_geometry(level)

    def _check_level(self, level: int) -> None:
        if not 0 <= level < len(self._dims):
            raise SlideReadError(
                str(self.path),
                f"level {level} does not exist (the slide has "
                f"{len(self._dims)} levels)",
            )

    def _clipped(
        self, level: int, location: tuple[int, int], size: tuple[int, int]
    ) -> Corners | None:
        """The part of a region inside ``level`` as corners, None when empty."""
        width, height = self._dims[level]
        lx, ly = location
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + size[0], width), min(ly + size[1], height)
        return (x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None

    @property
    def cache_budget(self) -> int:
        """Bytes of decoded pixels this reader may hold (its tile cache's bound)."""
        return int(self._cache.maxsize)

    @property
    def cached_bytes(self) -> int:
        """Bytes of decoded stored tiles held now (cache and plan)."""
        held = self._plan.held_bytes if self._plan is not None else 0
        return int(self._cache.currsize) + held

    @contextlib.contextmanager
    def planned_reads(
        self,
        level: int,
        locations: Iterable[tuple[int, int]],
        size: tuple[int, int],
    ) -> Iterator[None]:
        """Decode each stored tile once for reads announced in advance.

        Inside the block, reads of ``size`` (w, h) level pixels at
        ``locations`` (with :meth:`read_level_region`, or with
        :meth:`read_level_region_reduced` and ``factor * size`` equal to
        ``size``) share their stored tiles: each is decoded once, held until
        the last read that needs it and dropped right after (see
        :class:`~slidefed.client.slides.tile_plan.TilePlan`). Other reads work
        as usual.
        """
        self._check_level(level)
        geometry = self._tile_geometry(level)
        regions = (
            self._clipped(level, (int(lx), int(ly)), size) for lx, ly in locations
        )
        uses = (
            count_uses(level, geometry, (c for c in regions if c is not None))
            if geometry is not None
            else {}
        )
        plan = TilePlan(uses, int(self._cache.maxsize), self.decode_counted)
        saved, self._plan = self._plan, plan
        try:
            yield
        finally:
            self._plan = saved
            plan.close()

    def _make_room(self, planned: int) -> int:
        """Evict cached tiles (least recently used first) until ``planned``
        bytes of planned tiles fit beside them; the bytes they still take."""
        cache = self._cache
        while cache and planned + cache.currsize > cache.maxsize:
            cache.popitem()
        return int(cache.currsize)

    def decode_counted(
        self, key: TileKey, into: NDArray[np.uint8] | None = None
    ) -> NDArray[np.uint8]:
        """Decode a stored tile (into ``into`` if it has the tile's shape)."""
        self.tiles_decoded += 1
        if into is not None:
            level, tx, ty = key
            width, height = self._dims[level]
            tw, th = into.shape[1], into.shape[0]
            if (
                (tx + 1) * tw <= width
                and (ty + 1) * th <= height
                and (self._tile_geometry(level) == (tw, th))
            ):
                return self._decode_tile(level, tx, ty, into)
        return self._decode_tile(*key)

    def _tile(self, key: TileKey, inner: bool) -> NDArray[np.uint8]:
        """A decoded stored tile, from the plan, the cache or the file.

        Outside a plan, a tile wholly inside the region read (``inner``) is
        taken as needed by no other read: it is not cached.
        """
        plan = self._plan
        cache = self._cache
        if plan is not None and key in plan:
            return plan.take(key, self._make_room)
        tile = cache.get(key)
        if tile is None:
            tile = self.decode_counted(key)
            if not inner:
                cache[key] = tile
        return tile

    def _pieces(
        self,
        level: int,
        geometry: tuple[int, int],
        corners: Corners,
    ) -> Iterator[tuple[int, int, int, int, NDArray[np.uint8]]]:
        """The parts of the stored tiles that cover ``corners`` (x0, y0, x1, y1).

        Yields ``(sx0, sy0, sx1, sy1, pixels)``: level coordinates of each part
        and its pixels, tile row by tile row.
        """
        tw, th = geometry
        x0, y0, x1, y1 = corners
        cols, rows = tile_span(geometry, corners)
        for ty in rows:
            ty0 = ty * th
            sy0, sy1 = max(y0, ty0), min(y1, ty0 + th)
            inner_y = sy0 == ty0 and sy1 == ty0 + th
            for tx in cols:
                tx0 = tx * tw
                sx0, sx1 = max(x0, tx0), min(x1, tx0 + tw)
                inner = inner_y and sx0 == tx0 and sx1 == tx0 + tw
                tile = self._tile((level, tx, ty), inner)
                piece = tile[sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0]
                yield sx0, sy0, sx1, sy1, piece

    def _assemble(
        self,
        level: int,
        geometry: tuple[int, int],
        corners: Corners,
        origin: tuple[int, int],
        out: NDArray[np.uint8],
    ) -> None:
        """Copy the stored tiles' parts under ``corners`` into ``out``.

        :meth:`_pieces` written out, for the hot path of a grid: one copy per
        stored tile and region, no generator in between.
        """
        tw, th = geometry
        x0, y0, x1, y1 = corners
        lx, ly = origin
        cols, rows = tile_span(geometry, corners)
        tile_of = self._tile
        for ty in rows:
            ty0 = ty * th
            sy0, sy1 = max(y0, ty0), min(y1, ty0 + th)
            inner_y = sy0 == ty0 and sy1 == ty0 + th
            dst = out[sy0 - ly : sy1 - ly]
            for tx in cols:
                tx0 = tx * tw
                sx0, sx1 = max(x0, tx0), min(x1, tx0 + tw)
                tile = tile_of((level, tx, ty), inner_y and sx1 - sx0 == tw)
                dst[:, sx0 - lx : sx1 - lx] = tile[
                    sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0
                ]

    def region_error(
        self, level: int, lx: int, ly: int, exc: BaseException
    ) -> SlideReadError:
        """A reader's error while reading a region, as a :class:`SlideReadError`."""
        return SlideReadError(
            str(self.path),
            f"level {level} region at ({lx}, {ly}) unreadable "
            f"({type(exc).__name__}: {exc})",
        )

    @contextlib.contextmanager
    def _region_errors(self, level: int, lx: int, ly: int) -> Iterator[None]:
        """Turn a reader's error inside the block into a :class:`SlideReadError`."""
        try:
            yield
        except SlideReadError:
            raise
        except READ_ERRORS as exc:
            raise self.region_error(level, lx, ly, exc) from exc

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> NDArray[np.uint8]:
        """Read ``size`` pixels of ``level`` at level-0 ``location`` as (h, w, 3).

        The location converts to level pixels as tiffslide does,
        ``int(x / downsample)``.
        """
        self._check_level(level)
        ds = self._downsamples[level]
        lx, ly = int(location[0] / ds), int(location[1] / ds)
        return self.read_level_region(level, (lx, ly), size)

    def _is_one_tile(
        self,
        level: int,
        geometry: tuple[int, int],
        corners: tuple[int, int, int, int],
        size: tuple[int, int],
        out: NDArray[np.uint8],
    ) -> bool:
        """Whether the region is exactly one stored tile, not in the cache."""
        tw, th = geometry
        x0, y0, x1, y1 = corners
        return (
            x0 % tw == 0
            and y0 % th == 0
            and x1 - x0 == tw
            and y1 - y0 == th
            and size == (tw, th)
            and out.flags.c_contiguous
            and self._cache.get((level, x0 // tw, y0 // th)) is None
            and not (self._plan and self._plan.held((level, x0 // tw, y0 // th)))
        )

    def read_level_region(
        self,
        level: int,
        location: tuple[int, int],
        size: tuple[int, int],
        out: NDArray[np.uint8] | None = None,
    ) -> NDArray[np.uint8]:
        """Read ``size`` (w, h) pixels at ``location`` in ``level``'s own pixels.

        Parameters
        ----------
        level : int
            Pyramid level.
        location : tuple of int
            (x, y) of the top-left pixel, in pixels of ``level``.
        size : tuple of int
            (width, height) to read.
        out : numpy.ndarray, optional
            A C-contiguous (h, w, 3) uint8 array to fill (saves a copy).

        Returns
        -------
        numpy.ndarray
            (h, w, 3) uint8; pixels outside the level are black.

        Raises
        ------
        SlideReadError
            If a stored tile cannot be read or decoded.
        """
        self._check_level(level)
        lx, ly = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if out is None:
            out = np.empty((h, w, 3), dtype=np.uint8)
        width, height = self._dims[level]
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, width), min(ly + h, height)
        if x0 > lx or y0 > ly or x1 < lx + w or y1 < ly + h:
            out[...] = 0
        if x0 >= x1 or y0 >= y1:
            return out
        geometry = self._tile_geometry(level)
        corners = (x0, y0, x1, y1)
        try:
            if geometry is None:
                out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._fallback_region(
                    level, x0, y0, x1 - x0, y1 - y0
                )
            elif self._is_one_tile(level, geometry, corners, (w, h), out):
                # One whole stored tile: decode straight into ``out``.
                key = (level, x0 // geometry[0], y0 // geometry[1])
                self._decode_tile(*key, out)
                self.tiles_decoded += 1
                if self._plan is not None:
                    self._plan.consume(key)
            else:
                self._assemble(level, geometry, corners, (lx, ly), out)
        except SlideReadError:
            raise
        except READ_ERRORS as exc:
            raise self.region_error(level, lx, ly, exc) from exc
        return out

    def read_level_region_reduced(
        self,
        level: int,
        location: tuple[int, int],
        size: tuple[int, int],
        factor: int,
        out: NDArray[np.uint8] | None = None,
    ) -> NDArray[np.uint8]:
        """Read ``factor * size`` level pixels at ``location``, averaged in
        ``factor`` x ``factor`` blocks: (h, w, 3) for ``size`` (w, h).

        Each stored tile is reduced as soon as it is decoded, while it is in
        the CPU cache, instead of assembling the full-resolution region first.
        The result equals reducing the full region, pixel for pixel.

        Raises
        ------
        SlideReadError
            If a stored tile cannot be read or decoded.
        """
        self._check_level(level)
        lx, ly = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if out is None:
            out = np.empty((h, w, 3), dtype=np.uint8)
        corners = (lx, ly, lx + w * factor, ly + h * factor)
        geometry = self._tile_geometry(level)
        if geometry is None or not self._reducible_per_tile(
            level, geometry, corners, factor
        ):
            full = self.read_level_region(level, (lx, ly), (w * factor, h * factor))
            out[...] = box_reduce(full, factor)
            return out
        with self._region_errors(level, lx, ly):
            for sx0, sy0, sx1, sy1, piece in self._pieces(level, geometry, corners):
                out[
                    (sy0 - ly) // factor : (sy1 - ly) // factor,
                    (sx0 - lx) // factor : (sx1 - lx) // factor,
                ] = box_reduce(piece, factor)
        return out

    def _reducible_per_tile(
        self,
        level: int,
        geometry: tuple[int, int],
        corners: tuple[int, int, int, int],
        factor: int,
    ) -> bool:
        """Whether blocks of ``factor`` never straddle a stored tile or the edge."""
        width, height = self._dims[level]
        x0, y0, x1, y1 = corners
        return not (
            factor < 2
            or x0 < 0
            or y0 < 0
            or x1 > width
            or y1 > height
            or x0 % factor
            or y0 % factor
            or geometry[0] % factor
            or geometry[1] % factor
        )


__all__ = [
    "TILE_CACHE_BYTES",
    "StoredTileReader",
    "tile_cache",
]
