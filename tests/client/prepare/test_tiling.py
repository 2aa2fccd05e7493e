"""Reading a tile grid: each stored tile decoded once, pixels unchanged; level choice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiffslide
from numpy.typing import NDArray
from PIL import Image

from slidefed.bench.tiling import write_pyramid
from slidefed.client.config import TilingSection, load_site_config
from slidefed.client.prepare.cache import FeatureCache, cache_key, slide_sha256
from slidefed.client.prepare.encoders import get_encoder
from slidefed.client.prepare.pipeline import prepare_site
from slidefed.client.prepare.slide import tiling_params
from slidefed.client.prepare.tiling import (
    TileGrid,
    iter_tiles,
    plan_tiles,
    read_tile,
)
from slidefed.client.slides import TiffSlideSource, box_reduce, open_slide
from slidefed.demo.synth import synth_site

STORED = 256 * 256 * 3  # bytes of one decoded 256-px stored tile


def _image(width: int, height: int, seed: int) -> NDArray[np.uint8]:
    """Smooth colour with noise: JPEG keeps it H&E-like, no two tiles alike."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack(
        [180 + 40 * np.sin(xx / 97.0), 120 + 50 * np.cos(yy / 61.0), 190 + 0 * xx], -1
    )
    noise = rng.integers(-25, 26, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2304 x 1280 px at 0.5 um/px, 256-px JPEG tiles (9 x 5 of them)."""
    path = tmp_path_factory.mktemp("grid") / "p.tif"
    write_pyramid(path, _image(2304, 1280, 1), mpp=0.5, downsamples=(1, 4))
    return path


def _stored_tiles_under(grid: TileGrid, tile: int = 256) -> set[tuple[int, int]]:
    """The stored tiles the grid's tiles overlap, from the grid alone."""
    rs = grid.read_size
    needed = set()
    for xy in grid.coords:
        lx, ly = grid.level_xy(xy)
        for ty in range(ly // tile, (ly + rs - 1) // tile + 1):
            for tx in range(lx // tile, (lx + rs - 1) // tile + 1):
                needed.add((tx, ty))
    return needed


def _level_pixels(path: Path, level: int) -> NDArray[np.uint8]:
    """A whole level as tiffslide's tifffile store decodes it (the reference)."""
    with tiffslide.TiffSlide(path) as ts:
        stored: Any = ts.zarr_group[str(level)]
        return np.asarray(stored[:], dtype=np.uint8)[..., :3]


def _expected(level: NDArray[np.uint8], grid: TileGrid, xy: tuple[int, int]) -> Any:
    """A grid tile cut from the reference level, resized as the reader does."""
    lx, ly = grid.level_xy(xy)
    rs, ts = grid.read_size, grid.tile_size
    region = np.zeros((rs, rs, 3), np.uint8)
    part = level[ly : ly + rs, lx : lx + rs]
    region[: part.shape[0], : part.shape[1]] = part
    if not grid.resize:
        return region
    if rs % ts == 0:
        return box_reduce(region, rs // ts)
    img = Image.fromarray(region).resize((ts, ts), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _full_grid(
    slide: TiffSlideSource, level: int, read_size: int, tile_size: int
) -> TileGrid:
    """Every whole tile of ``level``, row by row (no tissue filter)."""
    width, height = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    return TileGrid(
        level=level,
        read_size=read_size,
        tile_size=tile_size,
        mpp=0.5,
        coords=[
            (round(tx * read_size * ds), round(ty * read_size * ds))
            for ty in range(height // read_size)
            for tx in range(width // read_size)
        ],
        level_downsample=ds,
    )


def test_default_grid_decodes_each_stored_tile_once(pyramid: Path) -> None:
    level0 = _level_pixels(pyramid, 0)
    # Room for 17 decoded stored tiles: less than the two rows of 9 that a row
    # of 224-px tiles straddles, but the batches of 7 tiles that the reader
    # fills at once (the one to come and those of the next row, 21 tiles).
    with TiffSlideSource(pyramid, cache_bytes=17 * STORED) as slide:
        planned = plan_tiles(slide, TilingSection(tissue_fraction=0.01))
        assert (planned.level, planned.read_size, planned.resize) == (0, 224, False)
        # The tissue mask's tiles (level 1) stay cached: the plan evicts them.
        mask_tiles = slide.cached_bytes
        assert mask_tiles > 0
        slide.tiles_decoded = 0
        grid = _full_grid(slide, 0, 224, 224)  # 224 px at 0.5 um/px, 10 x 5
        needed = _stored_tiles_under(grid)
        assert len(needed) == 45
        assert len(grid.coords) == 50
        tiles = []
        for batch in iter_tiles(slide, grid, 7):
            assert slide.cached_bytes <= 17 * STORED
            tiles.append(batch.tiles.copy())
            for xy, tile in zip(batch.coords, batch.tiles, strict=True):
                np.testing.assert_array_equal(tile, _expected(level0, grid, xy))
        assert slide.tiles_decoded == len(needed)
        # Nothing of the grid is held once it is read.
        assert slide.cached_bytes <= mask_tiles

    # Without the plan, least-recently-used eviction in a cache that holds less
    # than two rows decodes tiles again, for the same pixels.
    with TiffSlideSource(pyramid, cache_bytes=12 * STORED) as slide:
        unplanned = [b.tiles.copy() for b in iter_tiles(slide, grid, 7, planned=False)]
        assert slide.tiles_decoded > len(needed)
    np.testing.assert_array_equal(np.concatenate(tiles), np.concatenate(unplanned))


def test_a_cache_smaller_than_a_row_still_reads_right(pyramid: Path) -> None:
    level0 = _level_pixels(pyramid, 0)
    with TiffSlideSource(pyramid, cache_bytes=3 * STORED) as slide:
        grid = _full_grid(slide, 0, 224, 224)
        for batch in iter_tiles(slide, grid, 5):
            assert slide.cached_bytes <= 3 * STORED
            for xy, tile in zip(batch.coords, batch.tiles, strict=True):
                np.testing.assert_array_equal(tile, _expected(level0, grid, xy))
        # Tiles that did not fit are decoded again, at most once a read.
        assert len(_stored_tiles_under(grid)) < slide.tiles_decoded
        assert slide.tiles_decoded <= 4 * len(grid.coords)


def test_batches_kept_by_the_caller_are_not_overwritten(pyramid: Path) -> None:
    with open_slide(pyramid) as slide:
        grid = plan_tiles(slide, TilingSection(tissue_fraction=0.01))
        kept = list(iter_tiles(slide, grid, 4))
        views = [b.tiles[1:] for b in iter_tiles(slide, grid, 4)]
        for batch, view in zip(kept, views, strict=True):
            for xy, tile in zip(batch.coords, batch.tiles, strict=True):
                np.testing.assert_array_equal(tile, read_tile(slide, grid, xy))
            np.testing.assert_array_equal(view, batch.tiles[1:])


@pytest.mark.parametrize(
    ("level", "read_size", "tile_size"),
    [(0, 200, 200), (0, 512, 256), (0, 269, 224), (1, 100, 100)],
)
def test_other_grids_equal_the_reference(
    pyramid: Path, level: int, read_size: int, tile_size: int
) -> None:
    reference = _level_pixels(pyramid, level)
    # Room for the 6-tile batches from the one to come to the end of the row
    # after next of the finest grid (a 256-px stored row spans three rows of
    # 200-px tiles).
    with TiffSlideSource(pyramid, cache_bytes=20 * STORED) as slide:
        grid = _full_grid(slide, level, read_size, tile_size)
        for batch in iter_tiles(slide, grid, 6):
            for xy, tile in zip(batch.coords, batch.tiles, strict=True):
                np.testing.assert_array_equal(tile, _expected(reference, grid, xy))
        assert slide.tiles_decoded == len(_stored_tiles_under(grid))


# ----------------------------------------------------------------- level choice
def _decoded_pixels(slide: TiffSlideSource, grid: TileGrid) -> int:
    """Pixels decoded to read the grid (every stored tile of the pyramid is 256 px)."""
    slide.clear_cache()
    slide.tiles_decoded = 0
    for _ in iter_tiles(slide, grid, 16):
        pass
    return slide.tiles_decoded * 256 * 256


@pytest.mark.parametrize(
    ("mpp0", "level", "read_size", "resize"),
    [
        (0.2527, 1, 224, False),  # a 0.5054 um/px level, 1.1% coarser: read as is
        (0.26, 1, 215, True),  # 0.52 um/px, 4% coarser: resampled up to 224 px
        (0.2675, 0, 419, True),  # 0.535 um/px, 7% coarser: level 0, reduced
    ],
)
def test_a_level_a_few_percent_coarser_is_read(
    tmp_path: Path, mpp0: float, level: int, read_size: int, resize: bool
) -> None:
    path = tmp_path / "scan40.tif"
    write_pyramid(path, _image(2048, 1536, 2), mpp=mpp0, downsamples=(1, 2, 8))
    tiling = TilingSection(tissue_fraction=0.01)  # 224 px at 0.5 um/px
    with TiffSlideSource(path) as slide:
        grid = plan_tiles(slide, tiling)
        assert (grid.level, grid.read_size, grid.resize) == (level, read_size, resize)
        reference = _level_pixels(path, grid.level)
        tiles = list(iter_tiles(slide, grid, 16))
        for batch in tiles:
            for xy, tile in zip(batch.coords, batch.tiles, strict=True):
                np.testing.assert_array_equal(tile, _expected(reference, grid, xy))
        decoded = _decoded_pixels(slide, grid)
        # Tiles over the same area from level 0 (what was read before).
        at_level0 = TileGrid(
            level=0,
            read_size=round(224 * 0.5 / mpp0),
            tile_size=224,
            mpp=0.5,
            coords=grid.coords,
        )
        from_level0 = _decoded_pixels(slide, at_level0)
    if level == 1:
        # 12 stored tiles of level 1 against 42 of level 0 for the same tiles.
        assert decoded == 12 * 256 * 256
        assert from_level0 == 42 * 256 * 256
    else:
        assert decoded == from_level0


def test_features_from_the_old_level_are_not_served(tmp_path: Path) -> None:
    site = synth_site(tmp_path, patients=2, seed=1, width=1024, height=768)
    (tmp_path / "site.toml").write_text('[site]\nname = "level-site"\n')
    rel = site.manifest.read_text().splitlines()[1].split(",")[0]
    slide = tmp_path / rel
    # A 40x scan whose 2x level is 0.5054 um/px: read from level 1 now.
    write_pyramid(slide, _image(2048, 1536, 3), mpp=0.2527, downsamples=(1, 2, 8))
    config = load_site_config(tmp_path / "site.toml")
    encoder = get_encoder(config.features.encoder)
    # What the previous grid (version 2, level 0) left in the cache.
    old_params = {**tiling_params(config.tiling), "grid": 2}
    old_key = cache_key(slide_sha256(slide), encoder.encoder_id, old_params)
    stale = np.full((3, encoder.dim), -1.0, np.float32)
    FeatureCache(config.cache_dir).save(old_key, stale, np.zeros((3, 2), np.int64))

    report = prepare_site(config, workers=1)
    outcome = next(s for s in report.slides if s.slide == rel)
    assert outcome.status == "ok"
    assert outcome.key != old_key
    features = FeatureCache(config.cache_dir).load(outcome.key)
    assert len(features) > 3
    assert not np.any(np.all(features == -1.0, axis=1))
