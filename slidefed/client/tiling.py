"""A tile grid at a target resolution, chosen from the tissue mask."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from numpy.typing import NDArray
from PIL import Image
from pydantic import BaseModel, ConfigDict

from slidefed.client.slides import SlideSource
from slidefed.client.tissue import tissue_mask
from slidefed.common.config import TilingSection
from slidefed.common.errors import SlideReadError

# Level downsamples are floats (2.0005 on real scans): compare with a tolerance.
_LEVEL_TOLERANCE = 0.01
# Skip the resize when the read size is this close to the tile size.
_RESIZE_TOLERANCE = 0.02


class TileGrid(BaseModel):
    """Where the tiles of one slide are and how to read them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    level: int
    read_size: int
    tile_size: int
    mpp: float
    coords: list[tuple[int, int]]


def slide_mpp(slide: SlideSource, tiling: TilingSection) -> float:
    """Level-0 mpp from the file, else the site's fallback, else an error."""
    if slide.mpp:
        return slide.mpp
    if tiling.fallback_mpp:
        return tiling.fallback_mpp
    raise SlideReadError(
        str(slide.path),
        "no resolution (mpp) in the file; set tiling.fallback_mpp in site.toml",
    )


def plan_tiles(slide: SlideSource, tiling: TilingSection) -> TileGrid:
    """Lay a grid at ``tiling.target_mpp`` over the tissue of ``slide``."""
    mpp0 = slide_mpp(slide, tiling)
    ds = tiling.target_mpp / mpp0
    level = 0
    for i, d in enumerate(slide.level_downsamples):
        if d <= ds * (1 + _LEVEL_TOLERANCE):
            level = i
    level_ds = slide.level_downsamples[level]
    read_size = round(tiling.tile_size * ds / level_ds)
    step0 = tiling.tile_size * ds  # tile footprint in level-0 pixels
    width0, height0 = slide.level_dimensions[0]
    mask, mask_ds = tissue_mask(slide)
    coords: list[tuple[int, int]] = []
    nx, ny = int(width0 // step0), int(height0 // step0)
    for ty in range(ny):
        for tx in range(nx):
            x0, y0 = tx * step0, ty * step0
            m = mask[
                int(y0 / mask_ds) : max(math.ceil((y0 + step0) / mask_ds), 1),
                int(x0 / mask_ds) : max(math.ceil((x0 + step0) / mask_ds), 1),
            ]
            if m.size and float(m.mean()) >= tiling.tissue_fraction:
                coords.append((round(x0), round(y0)))
    return TileGrid(
        level=level,
        read_size=read_size,
        tile_size=tiling.tile_size,
        mpp=tiling.target_mpp,
        coords=coords,
    )


def read_tile(
    slide: SlideSource, grid: TileGrid, xy: tuple[int, int]
) -> NDArray[np.uint8]:
    """Read one tile of ``grid`` at level-0 ``xy`` as (tile, tile, 3) uint8."""
    arr = slide.read_region(xy, grid.level, (grid.read_size, grid.read_size))
    if abs(grid.read_size - grid.tile_size) > _RESIZE_TOLERANCE * grid.tile_size:
        img = Image.fromarray(arr).resize(
            (grid.tile_size, grid.tile_size), Image.Resampling.BILINEAR
        )
        return np.asarray(img, dtype=np.uint8)
    if grid.read_size != grid.tile_size:
        out = np.full((grid.tile_size, grid.tile_size, 3), 255, dtype=np.uint8)
        n = min(grid.read_size, grid.tile_size)
        out[:n, :n] = arr[:n, :n]
        return out
    return arr


def iter_tile_batches(
    slide: SlideSource, grid: TileGrid, batch_size: int
) -> Iterator[NDArray[np.uint8]]:
    """Yield tiles in batches of (n, tile, tile, 3); memory stays bounded."""
    for start in range(0, len(grid.coords), batch_size):
        chunk = grid.coords[start : start + batch_size]
        yield np.stack([read_tile(slide, grid, xy) for xy in chunk])


__all__ = ["TileGrid", "iter_tile_batches", "plan_tiles", "read_tile", "slide_mpp"]
