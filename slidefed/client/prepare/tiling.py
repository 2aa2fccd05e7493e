"""A tile grid at a target resolution, chosen from the tissue mask, and its reads.

The grid is read from the coarsest pyramid level at most
:data:`LEVEL_MPP_TOLERANCE` coarser than the target resolution (tiles are then
resampled to it), and laid in that level's pixels, with its
origin at (0, 0) and a step of ``read_size`` level pixels; tile positions are
recorded in level-0 pixels (``round(level_x * downsample)``, an exact inverse of
``round(x / downsample)``). When ``read_size`` equals the stored tile size,
every tile is one stored tile: the reader decodes the stored bytes straight
into the batch. Otherwise (the default grid: 224 px over 256-px stored tiles)
each stored tile under the grid is decoded once, into a buffer that stays in
the CPU cache, and copied at once into every tile over it
(:mod:`~slidefed.client.slides.scatter`); where tiles are resampled, the grid's
reads are announced to the reader instead, which holds each decoded stored
tile until the last tile that needs it. Tiles come in batches; memory is
bounded by the batch size and the reader's budget, never by the slide size.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import NamedTuple, TypeGuard

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydantic import BaseModel, ConfigDict

from slidefed.client.config import TilingSection
from slidefed.client.prepare.tissue import tissue_mask
from slidefed.client.slides.base import SlideSource
from slidefed.client.slides.pixels import box_reduce
from slidefed.client.slides.scatter import scatter_batches
from slidefed.client.slides.stored_tiles import StoredTileReader
from slidefed.common.errors import SlideDecodeRefused, SlideReadError

#: How much coarser than the target a pyramid level may be and still be read,
#: its tiles then resampled up to the target (0.05: up to 5% coarser). Real
#: pyramids miss the target by a little: 40x Aperio scans at 0.2527 um/px have
#: a 2x level at 0.5054 um/px, 1.1% coarser than 0.5. Reading that level
#: decodes a quarter of the pixels of level 0 (of a 4x pyramid level, a
#: sixteenth) for an upsampling by at most 1.05, which blurs only the finest
#: 5% of the band the level holds; scanners' nominal 20x already differ from
#: one another by more (0.44 to 0.53 um/px). Within ``_RESIZE_TOLERANCE`` no
#: resampling is done at all, as for level 0.
LEVEL_MPP_TOLERANCE = 0.05
# Skip the resize when the read size is this close to the tile size.
_RESIZE_TOLERANCE = 0.02
#: Largest upsampling of the scan allowed to reach the target resolution.
MAX_UPSAMPLE = 2.0
#: Version of the grid layout; part of the feature cache key. 3: a level up
#: to :data:`LEVEL_MPP_TOLERANCE` coarser than the target is read (and
#: resampled) where version 2 read a finer level, so the tiles, and the
#: features, of such slides change; every slide's key changes with it, since
#: keys are made before a slide is opened.
GRID_VERSION = 3


class TileGrid(BaseModel):
    """Where the tiles of one slide are and how to read them.

    Attributes
    ----------
    level : int
        Pyramid level the tiles are read from.
    read_size : int
        Side of a tile in ``level`` pixels (the grid step at that level).
    tile_size : int
        Side of a tile as delivered (after resizing ``read_size`` to it).
    mpp : float
        Microns per pixel of the delivered tiles.
    coords : list of (int, int)
        Level-0 (x, y) of each tile's top-left corner, row by row.
    level_downsample : float
        Downsample of ``level`` relative to level 0.
    fallback_mpp : float or None
        The site's ``tiling.fallback_mpp`` when the grid stands on it (the file
        states no mpp); None when the file gives its own.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: int
    read_size: int
    tile_size: int
    mpp: float
    coords: list[tuple[int, int]]
    level_downsample: float = 1.0
    fallback_mpp: float | None = None

    @property
    def resize(self) -> bool:
        """Whether tiles are resized from ``read_size`` to ``tile_size``."""
        return self.read_size != self.tile_size

    def level_xy(self, xy: tuple[int, int]) -> tuple[int, int]:
        """Position of a tile in ``level`` pixels."""
        ds = self.level_downsample
        return round(xy[0] / ds), round(xy[1] / ds)


class TileBatch(NamedTuple):
    """Tiles read together, and the ones that could not be read."""

    coords: list[tuple[int, int]]
    tiles: NDArray[np.uint8]
    failed: list[tuple[tuple[int, int], str]]


class MppMissing(SlideReadError):
    """The file states no mpp and the site gives no ``tiling.fallback_mpp``."""


def slide_mpp(slide: SlideSource, tiling: TilingSection) -> float:
    """Level-0 mpp from the file, else the site's fallback, else an error."""
    if slide.mpp:
        return slide.mpp
    if tiling.fallback_mpp:
        return tiling.fallback_mpp
    raise MppMissing(
        str(slide.path),
        "no resolution (mpp) in the file; set tiling.fallback_mpp in site.toml",
    )


def choose_level(downsamples: Sequence[float], ds: float) -> int:
    """The coarsest level whose downsample is at most ``ds``, give or take
    :data:`LEVEL_MPP_TOLERANCE` (level 0 when none is)."""
    level = 0
    for i, d in enumerate(downsamples):
        if d <= ds * (1 + LEVEL_MPP_TOLERANCE):
            level = i
    return level


def _tissue_fractions(
    mask: NDArray[np.bool_],
    mask_ds: float,
    step0: float,
    nx: int,
    ny: int,
) -> NDArray[np.float64]:
    """Tissue fraction of each of (ny, nx) tiles of ``step0`` level-0 pixels."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = mask.cumsum(axis=0, dtype=np.int64).cumsum(axis=1)

    def bounds(n: int, size: int) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        start = np.arange(n, dtype=np.float64) * step0 / mask_ds
        lo = np.clip(np.floor(start).astype(np.intp), 0, size - 1)
        hi = np.ceil(start + step0 / mask_ds).astype(np.intp)
        hi = np.clip(np.maximum(hi, lo + 1), 1, size)
        return lo, hi

    x_lo, x_hi = bounds(nx, mask.shape[1])
    y_lo, y_hi = bounds(ny, mask.shape[0])
    sums = (
        integral[np.ix_(y_hi, x_hi)]
        - integral[np.ix_(y_lo, x_hi)]
        - integral[np.ix_(y_hi, x_lo)]
        + integral[np.ix_(y_lo, x_lo)]
    )
    area = np.outer(y_hi - y_lo, x_hi - x_lo)
    return np.asarray(sums / np.maximum(area, 1), dtype=np.float64)


def plan_tiles(
    slide: SlideSource,
    tiling: TilingSection,
    *,
    mask: tuple[NDArray[np.bool_], float] | None = None,
) -> TileGrid:
    """Lay a grid at ``tiling.target_mpp`` over the tissue of ``slide``.

    ``mask`` is a tissue mask and its downsample relative to level 0 (the QC
    stage's, with ink and folds left out); by default
    :func:`~slidefed.client.prepare.tissue.tissue_mask` of the slide.

    Raises
    ------
    SlideReadError
        If the slide has no mpp and the site gives none, if its resolution is
        too coarse for the target, or if it is smaller than one tile.
    """
    mpp0 = slide_mpp(slide, tiling)
    ds = tiling.target_mpp / mpp0
    if ds < 1.0 / MAX_UPSAMPLE:
        raise SlideReadError(
            str(slide.path),
            f"scan resolution {mpp0:.4g} um/px is too coarse for tiles at "
            f"{tiling.target_mpp} um/px (they would be upsampled {1 / ds:.1f}x); "
            f"set tiling.target_mpp to at least {mpp0 / MAX_UPSAMPLE:.4g}",
        )
    level = choose_level(slide.level_downsamples, ds)
    level_ds = slide.level_downsamples[level]
    read_size = max(round(tiling.tile_size * ds / level_ds), 1)
    if abs(read_size - tiling.tile_size) <= _RESIZE_TOLERANCE * tiling.tile_size:
        read_size = tiling.tile_size
    width, height = slide.level_dimensions[level]
    nx, ny = width // read_size, height // read_size
    if nx == 0 or ny == 0:
        w0, h0 = slide.level_dimensions[0]
        raise SlideReadError(
            str(slide.path),
            f"slide is smaller than one tile ({w0} x {h0} px; a {tiling.tile_size}"
            f"-px tile at {tiling.target_mpp} um/px needs "
            f"{math.ceil(read_size * level_ds)} px)",
        )
    tissue, mask_ds = mask if mask is not None else tissue_mask(slide)
    fractions = _tissue_fractions(tissue, mask_ds, read_size * level_ds, nx, ny)
    keep = np.argwhere(fractions >= tiling.tissue_fraction)
    step0 = read_size * level_ds
    coords = [(round(int(tx) * step0), round(int(ty) * step0)) for ty, tx in keep]
    return TileGrid(
        level=level,
        read_size=read_size,
        tile_size=tiling.tile_size,
        mpp=tiling.target_mpp,
        coords=coords,
        level_downsample=level_ds,
        fallback_mpp=None if slide.mpp else mpp0,
    )


def _resize(arr: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    side = arr.shape[0]
    if side > size and side % size == 0 and arr.shape[1] == side:
        return box_reduce(arr, side // size)
    img = Image.fromarray(arr)
    return np.asarray(
        img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8
    )


def read_tile(
    slide: SlideSource, grid: TileGrid, xy: tuple[int, int]
) -> NDArray[np.uint8]:
    """Read one tile of ``grid`` at level-0 ``xy`` as (tile, tile, 3) uint8."""
    size = (grid.read_size, grid.read_size)
    arr = slide.read_level_region(grid.level, grid.level_xy(xy), size)
    return _resize(arr, grid.tile_size) if grid.resize else arr


def iter_tiles(
    slide: SlideSource,
    grid: TileGrid,
    batch_size: int,
    *,
    coords: Sequence[tuple[int, int]] | None = None,
    skip_unreadable: bool = False,
    planned: bool = True,
) -> Iterator[TileBatch]:
    """Yield the tiles of ``grid`` (or of ``coords``) in batches.

    Each stored tile under the tiles is decoded once: copied into every tile
    over it at once (:func:`~slidefed.client.slides.scatter.scatter_batches`)
    where tiles are cut from stored tiles as they are, else announced to the
    reader first
    (:meth:`~slidefed.client.slides.stored_tiles.StoredTileReader.planned_reads`),
    kept until the last tile that needs it, then dropped.

    Parameters
    ----------
    slide : SlideSource
        The open slide.
    grid : TileGrid
        Where to read.
    batch_size : int
        Tiles per batch; with the reader's bounded cache this bounds memory.
    coords : sequence of (int, int), optional
        A subset of the grid's level-0 positions (default: all of them).
    skip_unreadable : bool
        Leave out tiles that cannot be read (listed in ``failed``) instead of
        raising.
    planned : bool
        Read the tiles as a whole: scattered, or announced (default). A
        worker reading one chunk of a grid
        passes False: stored tiles it shares with later chunks then stay in
        its cache (least recently used out) instead of being dropped after
        their last use in this chunk.

    Raises
    ------
    SlideReadError
        If a tile cannot be read and ``skip_unreadable`` is false.
    SlideDecodeRefused
        If a stored tile declares more pixels than allowed, even with
        ``skip_unreadable``: the whole slide is refused, not the tile.
    """
    todo = grid.coords if coords is None else coords
    if planned and _scatters(slide, grid):
        yield from _scattered_batches(slide, grid, todo, batch_size, skip_unreadable)
        return
    with _planned(slide, grid, todo, planned):
        yield from _read_batches(slide, grid, todo, batch_size, skip_unreadable)


def _scatters(slide: SlideSource, grid: TileGrid) -> TypeGuard[StoredTileReader]:
    """Whether the tiles are cut from ``slide``'s stored tiles, scattered.

    Tiles that are each one whole stored tile are scattered too: a decode into
    the kept scratch buffer and one copy measured faster than decoding into
    the batch, where half the slots are buffers the decoder is slow in
    (:mod:`~slidefed.client.slides.scratch`).
    """
    if not isinstance(slide, StoredTileReader) or grid.resize:
        return False
    return slide.stored_tile_size(grid.level) is not None


def _scattered_batches(
    slide: StoredTileReader,
    grid: TileGrid,
    todo: Sequence[tuple[int, int]],
    batch_size: int,
    skip_unreadable: bool,
) -> Iterator[TileBatch]:
    """The batches of :func:`iter_tiles`, each stored tile decoded once and
    copied into every tile over it (:mod:`~slidefed.client.slides.scatter`)."""
    ts = grid.tile_size
    batches = scatter_batches(
        slide,
        grid.level,
        [grid.level_xy(xy) for xy in todo],
        ts,
        batch_size,
        alloc=lambda n: _free_array((n, ts, ts, 3)),
        budget=slide.cache_budget,
    )
    for index, (tiles, errors) in enumerate(batches):
        chunk = todo[index * batch_size : (index + 1) * batch_size]
        if not errors:
            yield TileBatch(coords=list(chunk), tiles=tiles, failed=[])
            continue
        first = min(errors)
        if not skip_unreadable:
            raise errors[first]
        keep = [i for i in range(len(chunk)) if i not in errors]
        failed = [(chunk[i], errors[i].reason) for i in sorted(errors)]
        tiles[: len(keep)] = tiles[keep]
        yield TileBatch([chunk[i] for i in keep], tiles[: len(keep)], failed)


def _planned(
    slide: SlideSource,
    grid: TileGrid,
    todo: Sequence[tuple[int, int]],
    planned: bool,
) -> AbstractContextManager[None]:
    """The reader's plan of the grid's reads: each stored tile decoded once."""
    if not planned or not isinstance(slide, StoredTileReader):
        return contextlib.nullcontext()
    size = (grid.read_size, grid.read_size)
    return slide.planned_reads(grid.level, (grid.level_xy(xy) for xy in todo), size)


# Batch arrays kept for reuse in this process: the caller usually holds the
# last batch while the next is read, and a scattered read fills the next
# row's batch beside the one to come, so the one before them is free again.
_SPARE_BATCHES = 3
_SPARE: list[NDArray[np.uint8]] = []


def _free_array(shape: tuple[int, int, int, int]) -> NDArray[np.uint8]:
    """An array of ``shape`` that nothing else refers to, kept for reuse.

    Fresh pages cost the kernel a fault each, about a tenth of the time a tile
    takes to decode, so batch arrays are filled again once free. An array no
    batch, view or tensor refers to any more has three references here: the
    list, the loop variable and getrefcount's argument.
    """
    for i in range(len(_SPARE)):  # not enumerate: its tuple is one more reference
        arr = _SPARE[i]
        if sys.getrefcount(arr) > 3:
            continue
        if len(arr) >= shape[0] and arr.shape[1:] == shape[1:]:
            return arr[: shape[0]]
        del _SPARE[i]  # free but the wrong shape: make room for a new one
        break
    fresh = np.empty(shape, dtype=np.uint8)
    if len(_SPARE) < _SPARE_BATCHES:
        _SPARE.append(fresh)
    return fresh


def _read_batches(
    slide: SlideSource,
    grid: TileGrid,
    todo: Sequence[tuple[int, int]],
    batch_size: int,
    skip_unreadable: bool,
) -> Iterator[TileBatch]:
    """The batches of :func:`iter_tiles`, read in order.

    A batch's array is filled again for a later batch once nothing refers to
    it any more (the caller dropped the batch and every view of it).
    """
    ts = grid.tile_size
    read = _tile_reader(slide, grid)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        if isinstance(slide, StoredTileReader):  # an archive fetches in batches
            span = (grid.read_size, grid.read_size)
            slide.prefetch(grid.level, [(grid.level_xy(xy), span) for xy in chunk])
        out = _free_array((len(chunk), ts, ts, 3))
        kept: list[tuple[int, int]] = []
        failed: list[tuple[tuple[int, int], str]] = []
        for xy in chunk:
            try:
                read(grid.level_xy(xy), out[len(kept)])
            except SlideDecodeRefused:
                raise
            except SlideReadError as exc:
                if not skip_unreadable:
                    raise
                failed.append((xy, exc.reason))
                continue
            kept.append(xy)
        yield TileBatch(coords=kept, tiles=out[: len(kept)], failed=failed)


def _tile_reader(
    slide: SlideSource, grid: TileGrid
) -> Callable[[tuple[int, int], NDArray[np.uint8]], None]:
    """A function that reads the tile at a level position into a (tile, tile, 3) slot."""
    ts, rs = grid.tile_size, grid.read_size
    # A whole-number reduction (40x -> 20x) is done per stored tile, as soon as
    # it is decoded; other resizes read the region, then resize it.
    factor = rs // ts if grid.resize and rs % ts == 0 else 0
    if factor > 1 and isinstance(slide, StoredTileReader):
        reader = slide

        def reduced(lxy: tuple[int, int], out: NDArray[np.uint8]) -> None:
            reader.read_level_region_reduced(grid.level, lxy, (ts, ts), factor, out=out)

        return reduced
    if grid.resize:
        buf = np.empty((rs, rs, 3), dtype=np.uint8)

        def resized(lxy: tuple[int, int], out: NDArray[np.uint8]) -> None:
            slide.read_level_region(grid.level, lxy, (rs, rs), out=buf)
            out[...] = _resize(buf, ts)

        return resized

    def direct(lxy: tuple[int, int], out: NDArray[np.uint8]) -> None:
        slide.read_level_region(grid.level, lxy, (ts, ts), out=out)

    return direct


def iter_tile_batches(
    slide: SlideSource, grid: TileGrid, batch_size: int
) -> Iterator[NDArray[np.uint8]]:
    """Yield tiles in batches of (n, tile, tile, 3); memory stays bounded."""
    for batch in iter_tiles(slide, grid, batch_size):
        yield batch.tiles


__all__ = [
    "GRID_VERSION",
    "LEVEL_MPP_TOLERANCE",
    "MAX_UPSAMPLE",
    "MppMissing",
    "TileBatch",
    "TileGrid",
    "choose_level",
    "iter_tile_batches",
    "iter_tiles",
    "plan_tiles",
    "read_tile",
    "slide_mpp",
]
