"""Grid reads that decode each stored tile once and copy it into every tile over it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from numpy.typing import NDArray

from slidefed.bench.tiling import write_pyramid
from slidefed.client.prepare.tiling import TileGrid, iter_tiles
from slidefed.client.slides import TiffSlideSource
from slidefed.client.slides.scatter import scatter_batches
from slidefed.common.errors import SlideReadError

TILE = 224 * 224 * 3  # bytes of one 224-px output tile


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2304 x 1280 px at 0.5 um/px with 256-px JPEG tiles (9 x 5), noisy colour."""
    rng = np.random.default_rng(7)
    image = rng.integers(60, 230, (1280, 2304, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("scatter") / "p.tif"
    write_pyramid(path, image, mpp=0.5, downsamples=(1, 4))
    return path


def _grid(coords: list[tuple[int, int]], size: int = 224) -> TileGrid:
    return TileGrid(level=0, read_size=size, tile_size=size, mpp=0.5, coords=coords)


def _row_major(width: int, height: int, size: int = 224) -> list[tuple[int, int]]:
    return [
        (x * size, y * size)
        for y in range(height // size)
        for x in range(width // size)
    ]


def _one_by_one(path: Path, grid: TileGrid) -> NDArray[np.uint8]:
    """The reference: each tile read on its own, no plan, no cache."""
    with TiffSlideSource(path, cache_bytes=1) as slide:
        size = (grid.read_size, grid.read_size)
        return np.stack(
            [slide.read_level_region(0, grid.level_xy(xy), size) for xy in grid.coords]
        )


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_default_grid_tiles_equal_regions_read_one_by_one(
    pyramid: Path, batch: int
) -> None:
    grid = _grid(_row_major(2304, 1280))  # 10 x 5 tiles over 9 x 5 stored tiles
    with TiffSlideSource(pyramid) as slide:
        batches = list(iter_tiles(slide, grid, batch))
        assert slide.tiles_decoded == 45  # each stored tile once
    assert [len(b.coords) for b in batches][:-1] == [batch] * (len(batches) - 1)
    assert [xy for b in batches for xy in b.coords] == grid.coords
    tiles = np.concatenate([b.tiles for b in batches])
    np.testing.assert_array_equal(tiles, _one_by_one(pyramid, grid))


def test_tiles_in_any_order_come_in_that_order(pyramid: Path) -> None:
    coords = _row_major(2304, 1280)
    order = np.random.default_rng(0).permutation(len(coords))
    grid = _grid([coords[i] for i in order])
    with TiffSlideSource(pyramid) as slide:
        tiles = np.concatenate([b.tiles for b in iter_tiles(slide, grid, 8)])
    np.testing.assert_array_equal(tiles, _one_by_one(pyramid, grid))


def test_held_output_is_bounded_and_decodes_again_past_it(pyramid: Path) -> None:
    grid = _grid(_row_major(2304, 1280))
    locations = [grid.level_xy(xy) for xy in grid.coords]
    live: list[int] = []
    made: list[NDArray[np.uint8]] = []

    def alloc(n: int) -> NDArray[np.uint8]:
        made.append(np.empty((n, 224, 224, 3), np.uint8))
        return made[-1]

    with TiffSlideSource(pyramid) as slide:
        tiles = []
        # Room for two batches of 4 tiles: the next row's tiles do not fit.
        batches = scatter_batches(
            slide, 0, locations, 224, 4, alloc=alloc, budget=8 * TILE
        )
        for index, (array, errors) in enumerate(batches):
            assert not errors
            live.append(len(made) - index)  # made and not yet given out
            tiles.append(array.copy())
        assert max(live) <= 2
        # Stored tiles under a later row were decoded again when it came.
        assert 45 < slide.tiles_decoded <= 4 * len(locations)
    np.testing.assert_array_equal(np.concatenate(tiles), _one_by_one(pyramid, grid))


def test_tiles_over_the_edge_are_black_outside(pyramid: Path) -> None:
    locations = [(2200, 1200), (-100, -50), (5000, 5000), (1000, 1100)]
    with TiffSlideSource(pyramid) as slide:
        ((tiles, errors),) = scatter_batches(
            slide,
            0,
            locations,
            224,
            8,
            alloc=lambda n: np.full((n, 224, 224, 3), 7, np.uint8),
            budget=1 << 20,
        )
        assert not errors
        for tile, xy in zip(tiles, locations, strict=True):
            np.testing.assert_array_equal(
                tile, slide.read_level_region(0, xy, (224, 224))
            )
    assert not tiles[2].any()  # wholly outside the level
    assert not tiles[1][:50].any()
    assert tiles[1][50:, 100:].all()


def _garble_stored_tile(pyramid: Path, tmp_path: Path, index: int) -> Path:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(pyramid.read_bytes())
    with tifffile.TiffFile(bad) as tf:
        page = tf.pages[0]
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
    with bad.open("r+b") as fh:
        fh.seek(offset)
        fh.write(b"\x00" * min(count, 64))
    return bad


def test_an_unreadable_stored_tile_fails_every_tile_over_it(
    pyramid: Path, tmp_path: Path
) -> None:
    bad = _garble_stored_tile(pyramid, tmp_path, 10)  # stored tile (1, 1)
    grid = _grid(_row_major(2304, 1280))
    # The tiles over level pixels 256..511 x 256..511.
    over = [(x, y) for x, y in grid.coords if x < 512 < x + 480 and y < 512 < y + 480]
    assert over == [(224, 224), (448, 224), (224, 448), (448, 448)]
    with TiffSlideSource(bad) as slide:
        batches = list(iter_tiles(slide, grid, 6, skip_unreadable=True))
        failed = [xy for b in batches for xy, _ in b.failed]
        assert failed == over
        reasons = {why for b in batches for _, why in b.failed}
        assert all(why.startswith("level 0 region at (") for why in reasons), reasons
        kept = [xy for b in batches for xy in b.coords]
        assert kept == [xy for xy in grid.coords if xy not in over]
        tiles = np.concatenate([b.tiles for b in batches])
        reference = _one_by_one(bad, _grid(kept))
        np.testing.assert_array_equal(tiles, reference)

        # Without skipping, the batches before the first bad tile come, then
        # the error that names it.
        batches_read = iter_tiles(slide, grid, 6)
        assert next(batches_read).coords == grid.coords[:6]
        with pytest.raises(
            SlideReadError, match=r"bad\.tif: level 0 region at \(224, 224\)"
        ):
            next(batches_read)
