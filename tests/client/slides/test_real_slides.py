"""Every real slide under shared/data/slides: levels as the reader libraries see
them, and tissue tiles (see shared/data/PROVENANCE.md for the files)."""

import json
from pathlib import Path

import numpy as np
import pytest
import tiffslide

from slidefed.cli import main
from slidefed.client.config import TilingSection
from slidefed.client.prepare.tiling import iter_tiles, plan_tiles
from slidefed.client.prepare.tissue import is_dark_background, mask_level, thumbnail
from slidefed.client.slides import open_slide, sniff_format
from slidefed.common.errors import SlideReadError

# The 16 x 16 px crop cannot hold a tile of 224 px at 0.5 um/px (nor of the
# smallest tile size the config allows, 32 px): it is skipped with that reason.
TOO_SMALL = {"openslide-python-small.svs"}


def real_slides(root: Path) -> list[Path]:
    """Slides under ``root``: TIFF-family files, each ``.dicom`` file, and each
    folder of ``.dcm`` files (one DICOM series with one file per level)."""
    slides: list[Path] = []
    for path in sorted(root.rglob("*")):
        if (path.is_dir() and any(p.suffix == ".dcm" for p in path.iterdir())) or (
            path.is_file() and path.suffix != ".dcm"
        ):
            slides.append(path)
    return slides


@pytest.fixture(scope="module")
def slides(shared_data: Path) -> list[Path]:
    found = real_slides(shared_data / "slides")
    assert len(found) >= 12
    return found


def _direct_level_count(path: Path) -> int:
    if sniff_format(path) == "dicom":
        wsidicom = pytest.importorskip("wsidicom")
        with wsidicom.WsiDicom.open(path) as wsi:
            return len(list(wsi.levels))
    with tiffslide.TiffSlide(path) as ts:
        return int(ts.level_count)


def test_every_file_is_covered(shared_data: Path, slides: list[Path]) -> None:
    files = {p for p in (shared_data / "slides").rglob("*") if p.is_file()}
    covered = {f for s in slides for f in ([s] if s.is_file() else s.iterdir())}
    assert files <= covered


def test_inspect_json_level_counts_match_the_libraries(
    slides: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["slide", "inspect", "--json", *map(str, slides)])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    assert len(out) == len(slides)
    for path, line in zip(slides, out, strict=True):
        info = json.loads(line)
        assert info["path"] == str(path)
        assert info["level_count"] == _direct_level_count(path), path.name
        assert len(info["levels"]) == info["level_count"]
        assert info["levels"][0]["downsample"] == 1.0
        assert {"width", "height", "downsample"} <= set(info["levels"][0])
        assert info["format"] in {"svs", "ndpi", "ome-tiff", "tiff", "dicom"}


def test_inspect_text_reports_unknown_mpp(
    shared_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = shared_data / "slides" / "aperio" / "tcga-cr-7395-01a-01-ts1.svs"
    assert main(["slide", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format svs, vendor aperio, 2 levels, mpp unknown, tile 256 x 256" in out
    assert "level 1: 2221 x 1783, downsample 2.0005" in out


def _tiling_for(path: Path) -> TilingSection:
    with open_slide(path) as slide:
        mpp = slide.mpp
    if mpp is not None and mpp > 8:
        # 16.8 um/px scans: tiles at their own resolution.
        return TilingSection(target_mpp=16.0, tile_size=64)
    return TilingSection(fallback_mpp=0.5)


def test_every_slide_yields_tissue_tiles(slides: list[Path]) -> None:
    counts: dict[str, int] = {}
    for path in slides:
        tiling = _tiling_for(path)
        with open_slide(path) as slide:
            if path.name in TOO_SMALL:
                with pytest.raises(SlideReadError, match="smaller than one tile"):
                    plan_tiles(slide, tiling)
                continue
            grid = plan_tiles(slide, tiling)
            first = next(iter_tiles(slide, grid, 8))
        counts[path.name] = len(grid.coords)
        assert grid.coords, path.name
        assert first.tiles.shape[1:] == (tiling.tile_size, tiling.tile_size, 3)
        assert first.tiles.std() > 5, path.name  # not a blank tile
    assert len(counts) == len(slides) - len(TOO_SMALL)


@pytest.mark.parametrize(
    "name", ["test3-DAPI-2-(387).ndpi", "test3-TRITC-2-(560).ndpi"]
)
def test_fluorescence_is_detected_and_tiled(shared_data: Path, name: str) -> None:
    path = shared_data / "slides" / "hamamatsu" / name
    with open_slide(path) as slide:
        rgb, _ = thumbnail(slide, mask_level(slide))
        grid = plan_tiles(slide, TilingSection())
        tiles = np.concatenate([b.tiles for b in iter_tiles(slide, grid, 32)])
    assert is_dark_background(rgb)
    # 0.5 um/px from a 0.228 um/px scan: level 1 (x2), 245 px resized to 224.
    assert (grid.level, grid.read_size) == (1, 245)
    assert len(grid.coords) >= 30
    # Tiles hold signal, not the black background around the section.
    assert float(np.median(tiles.max(axis=3))) > 8


def test_brightfield_is_not_taken_for_fluorescence(shared_data: Path) -> None:
    path = shared_data / "slides" / "aperio" / "CMU-1-Small-Region.svs"
    with open_slide(path) as slide:
        rgb, _ = thumbnail(slide, mask_level(slide))
    assert not is_dark_background(rgb)
