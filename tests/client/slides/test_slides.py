from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import tiffslide

from slidefed.client.config import TilingSection
from slidefed.client.prepare.tiling import iter_tiles, plan_tiles, read_tile
from slidefed.client.prepare.tissue import tissue_mask
from slidefed.client.slides import TiffSlideSource, open_slide, ycbcr_to_rgb
from slidefed.common.errors import SlideReadError
from slidefed.demo.synth import write_synthetic_slide


def test_synthetic_slide_is_a_pyramid_with_mpp(tmp_path: Path) -> None:
    path = tmp_path / "demo-size.tif"
    write_synthetic_slide(path, seed=0, tumour=True, width=2048, height=1536)
    with open_slide(path) as slide:
        info = slide.info()
    assert info.level_count >= 3
    assert info.mpp == pytest.approx(0.5)
    assert info.tile_size == (256, 256)
    assert [lv.downsample for lv in info.levels[:3]] == [1.0, 2.0, 4.0]


def test_text_file_is_not_a_slide(tmp_path: Path) -> None:
    bad = tmp_path / "notes.svs"
    bad.write_text("this is not a slide")
    with pytest.raises(SlideReadError, match=r"notes\.svs: not a readable slide"):
        open_slide(bad)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SlideReadError, match="file not found"):
        open_slide(tmp_path / "gone.tif")


def test_truncated_slide_is_rejected_at_open(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    write_synthetic_slide(path, seed=1, tumour=False, width=1024, height=768)
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match=r"cut\.tif"), open_slide(cut) as slide:
        plan_tiles(slide, TilingSection())


def test_tissue_grid_covers_tissue_only(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    write_synthetic_slide(path, seed=2, tumour=True, width=1536, height=1024)
    with open_slide(path) as slide:
        mask, ds = tissue_mask(slide)
        grid = plan_tiles(slide, TilingSection())
        tile = read_tile(slide, grid, grid.coords[0])
    assert 0.2 < mask.mean() < 0.8
    assert ds >= 1.0
    total = (1536 // 224) * (1024 // 224)
    assert 0 < len(grid.coords) < total
    assert tile.shape == (224, 224, 3)
    # A tissue tile is not blank glass.
    assert tile.mean() < 225


def test_resampling_to_target_mpp(tmp_path: Path) -> None:
    path = tmp_path / "s.tif"
    write_synthetic_slide(path, seed=2, tumour=False, width=1536, height=1024, mpp=0.25)
    with open_slide(path) as slide:
        grid = plan_tiles(slide, TilingSection(target_mpp=0.5))
        tile = read_tile(slide, grid, grid.coords[0])
    # 0.5 um/px from a 0.25 um/px scan: read 448 px at level 0 or 224 at level 1.
    assert (grid.level, grid.read_size) in {(0, 448), (1, 224)}
    assert tile.shape == (224, 224, 3)


def test_real_aperio_svs(shared_data: Path) -> None:
    with open_slide(shared_data / "slides" / "aperio" / "CMU-1-Small-Region.svs") as s:
        info = s.info()
    assert info.vendor == "aperio"
    assert info.format == "svs"
    assert info.mpp == pytest.approx(0.499, abs=1e-3)
    assert info.levels[0].width == 2220


def test_real_slide_without_mpp_needs_fallback(shared_data: Path) -> None:
    path = shared_data / "slides" / "aperio" / "tcga-cr-7395-01a-01-ts1.svs"
    with open_slide(path) as slide:
        assert slide.mpp is None
        with pytest.raises(SlideReadError, match="fallback_mpp"):
            plan_tiles(slide, TilingSection())
        grid = plan_tiles(slide, TilingSection(fallback_mpp=0.5))
    assert grid.coords


# ------------------------------------------------------------ formats and errors
@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("a.svs", b"", "empty file"),
        ("a.svs", b"\x89PNG\r\n\x1a\n" + bytes(64), "PNG image"),
        ("a.tif", b"\xff\xd8\xff\xe0" + bytes(64), "plain JPEG image"),
        ("a.svs", b"PK\x03\x04" + bytes(64), "ZIP archive"),
        ("a.czi", b"ZISRAWFILE" + bytes(64), "Zeiss CZI is an unsupported format"),
        ("a.mrxs", b"[GENERAL]\nSLIDE_ID=1\n", "MRXS is an unsupported format"),
        ("a.ndpi", bytes(range(256)) * 2, "unrecognised format"),
    ],
)
def test_non_slides_are_named_with_a_reason(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SlideReadError, match=reason) as info:
        open_slide(path)
    assert info.value.path == str(path)
    assert "\n" not in str(info.value)


def test_cut_svs_is_truncated_at_open(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / "slides" / "aperio" / "CMU-1-Small-Region.svs").read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[:600_000])
    with pytest.raises(SlideReadError, match="file is truncated"):
        open_slide(cut)


def test_sixteen_bit_slides_are_unsupported(tmp_path: Path) -> None:
    path = tmp_path / "u16.tif"
    data = np.zeros((512, 512, 3), np.uint16)
    tifffile.imwrite(path, data, tile=(256, 256), photometric="rgb")
    with pytest.raises(SlideReadError, match="unsupported pixel type uint16"):
        open_slide(path)


def test_greyscale_slides_read_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "grey.tif"
    grey = np.tile(np.arange(512, dtype=np.uint16)[None] % 256, (512, 1)).astype(
        np.uint8
    )
    tifffile.imwrite(path, grey, tile=(256, 256), compression="zlib")
    with open_slide(path) as slide:
        rgb = slide.read_region((100, 10), 0, (300, 20))
    assert rgb.shape == (20, 300, 3)
    np.testing.assert_array_equal(rgb[..., 0], grey[10:30, 100:400])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


# ---------------------------------------------------------------- fast path
@pytest.fixture(scope="module")
def pyramid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pyr") / "s.tif"
    write_synthetic_slide(path, seed=5, tumour=True, width=2048, height=1536)
    return path


def test_aligned_tiles_equal_tiffslide_read_region(pyramid: Path) -> None:
    tiling = TilingSection(target_mpp=0.5, tile_size=256, tissue_fraction=0.01)
    with open_slide(pyramid) as slide, tiffslide.TiffSlide(pyramid) as ts:
        grid = plan_tiles(slide, tiling)
        assert (grid.level, grid.read_size, grid.resize) == (0, 256, False)
        assert slide.stored_tile_size(0) == (256, 256)
        assert all(x % 256 == 0 and y % 256 == 0 for x, y in grid.coords)
        for batch in iter_tiles(slide, grid, 16):
            for xy, tile in zip(batch.coords, batch.tiles, strict=True):
                ref = ts.read_region(xy, 0, (256, 256), as_array=True)
                assert np.array_equal(tile, ref), xy
        assert len(grid.coords) > 20


def test_aligned_level_one_tiles_equal_stored_level(pyramid: Path) -> None:
    tiling = TilingSection(target_mpp=1.0, tile_size=256, tissue_fraction=0.01)
    with open_slide(pyramid) as slide, tiffslide.TiffSlide(pyramid) as ts:
        grid = plan_tiles(slide, tiling)
        stored: Any = ts.zarr_group["1"]
        level1 = np.asarray(stored[:])
        assert (grid.level, grid.read_size) == (1, 256)
        for batch in iter_tiles(slide, grid, 16):
            for xy, tile in zip(batch.coords, batch.tiles, strict=True):
                lx, ly = grid.level_xy(xy)
                assert np.array_equal(tile, level1[ly : ly + 256, lx : lx + 256])


def test_real_svs_aligned_240_tiles_equal_read_region(shared_data: Path) -> None:
    path = shared_data / "slides" / "aperio" / "CMU-1-Small-Region.svs"
    tiling = TilingSection(target_mpp=0.499, tile_size=240, tissue_fraction=0.01)
    with open_slide(path) as slide, tiffslide.TiffSlide(path) as ts:
        grid = plan_tiles(slide, tiling)
        assert (grid.read_size, grid.resize) == (240, False)
        for batch in iter_tiles(slide, grid, 32):
            for xy, tile in zip(batch.coords, batch.tiles, strict=True):
                ref = ts.read_region(xy, 0, (240, 240), as_array=True)
                assert int(np.abs(tile.astype(int) - ref).max()) == 0


@pytest.mark.filterwarnings("ignore:location=.*out-of-bounds:UserWarning")
def test_unaligned_regions_equal_tiffslide(pyramid: Path) -> None:
    rng = np.random.default_rng(0)
    with open_slide(pyramid) as slide, tiffslide.TiffSlide(pyramid) as ts:
        for _ in range(20):
            level = int(rng.integers(0, 2))
            w, h = (int(v) for v in rng.integers(1, 600, 2))
            x, y = (int(v) for v in rng.integers(-100, 2000, 2))
            ours = slide.read_region((x, y), level, (w, h))
            ref = ts.read_region((x, y), level, (w, h), as_array=True)
            np.testing.assert_array_equal(ours, ref)


def test_decoded_tile_cache_is_bounded(pyramid: Path) -> None:
    budget = 4 * 256 * 256 * 3
    with TiffSlideSource(pyramid, cache_bytes=budget) as slide:
        grid = plan_tiles(slide, TilingSection(tissue_fraction=0.01))
        for _ in iter_tiles(slide, grid, 8):
            assert slide._cache.currsize <= budget
        assert slide.tiles_decoded > 0


def test_unreadable_tiles_are_skipped_and_named(pyramid: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_bytes(pyramid.read_bytes())
    with tifffile.TiffFile(bad) as tf:
        page = tf.pages[0]
        offset, count = int(page.dataoffsets[9]), int(page.databytecounts[9])
    with bad.open("r+b") as fh:  # tile (1, 1) of level 0: garbage bytes
        fh.seek(offset)
        fh.write(b"\x00" * min(count, 64))
    tiling = TilingSection(target_mpp=0.5, tile_size=256, tissue_fraction=0.01)
    with open_slide(bad) as slide:
        grid = plan_tiles(slide, tiling)
        assert (256, 256) in grid.coords
        batches = list(iter_tiles(slide, grid, 64, skip_unreadable=True))
        failed = [xy for b in batches for xy, _ in b.failed]
        assert failed == [(256, 256)]
        assert sum(len(b.coords) for b in batches) == len(grid.coords) - 1
        with pytest.raises(SlideReadError, match=r"bad\.tif: level 0 region"):
            list(iter_tiles(slide, grid, 64))


def test_ycbcr_conversion_inverts_jfif_rgb_to_ycbcr() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (32, 32, 3)).astype(np.float64)
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    cb = 128 - 0.168736 * rgb[..., 0] - 0.331264 * rgb[..., 1] + 0.5 * rgb[..., 2]
    cr = 128 + 0.5 * rgb[..., 0] - 0.418688 * rgb[..., 1] - 0.081312 * rgb[..., 2]
    ycc = np.clip(np.rint(np.stack([y, cb, cr], -1)), 0, 255).astype(np.uint8)
    back = ycbcr_to_rgb(ycc).astype(int)
    assert np.abs(back - rgb).max() <= 2


def test_tiles_reduced_per_stored_tile_equal_reduced_regions(tmp_path: Path) -> None:
    from slidefed.bench.tiling import write_pyramid

    image = np.random.default_rng(3).integers(0, 256, (1024, 1280, 3), np.uint8)
    path = tmp_path / "scan40.tif"
    write_pyramid(path, image, mpp=0.25, downsamples=(1, 4))
    tiling = TilingSection(target_mpp=0.5, tile_size=224, tissue_fraction=0.01)
    with open_slide(path) as slide:
        grid = plan_tiles(slide, tiling)
        # 20x from 40x without a 20x level: 448 px at level 0, halved.
        assert (grid.level, grid.read_size, grid.tile_size) == (0, 448, 224)
        tiles = np.concatenate([b.tiles for b in iter_tiles(slide, grid, 3)])
        for xy, tile in zip(grid.coords, tiles, strict=True):
            np.testing.assert_array_equal(tile, read_tile(slide, grid, xy))
        region = slide.read_level_region(0, (448, 0), (448, 448)).astype(np.int32)
    box = region.reshape(224, 2, 224, 2, 3).sum(axis=(1, 3))
    np.testing.assert_array_equal(tiles[1], ((box + 2) // 4).astype(np.uint8))


def test_huge_single_strip_images_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "one-strip.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(
            shape=(12_000, 8_000, 3),
            dtype=np.uint8,
            photometric="rgb",
            rowsperstrip=12_000,
        )
    with pytest.raises(SlideReadError, match="cannot be read in bounded memory"):
        open_slide(path)
