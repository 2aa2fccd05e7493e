from pathlib import Path

import pytest

from slidefed.client.slides import open_slide
from slidefed.client.tiling import plan_tiles, read_tile
from slidefed.client.tissue import tissue_mask
from slidefed.common.config import TilingSection
from slidefed.common.errors import SlideReadError
from slidefed.common.synth import write_synthetic_slide


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
