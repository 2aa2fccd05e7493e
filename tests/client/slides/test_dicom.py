"""DICOM whole-slide images through the SlideSource protocol (real samples)."""

from pathlib import Path

import numpy as np
import pytest

from slidefed.client.config import TilingSection
from slidefed.client.prepare.tiling import plan_tiles
from slidefed.client.slides import open_slide
from slidefed.common.errors import SlideReadError

wsidicom = pytest.importorskip("wsidicom")

from slidefed.client.slides.dicom import (  # noqa: E402
    DicomSlideSource,
    has_adobe_marker,
    has_jfif_marker,
)


@pytest.fixture(scope="module")
def dicom_root(shared_data: Path) -> Path:
    return shared_data / "slides" / "dicom"


def test_folder_series_opens_with_wsidicom_levels(dicom_root: Path) -> None:
    folder = dicom_root / "cmu-1-small-region"
    with open_slide(folder) as slide, wsidicom.WsiDicom.open(folder) as wsi:
        assert isinstance(slide, DicomSlideSource)
        info = slide.info()
        direct = sorted(wsi.levels, key=lambda lv: lv.level)
        assert info.level_count == len(direct) == 3
        assert [(lv.width, lv.height) for lv in info.levels] == [
            (lv.size.width, lv.size.height) for lv in direct
        ]
        assert slide.scales == [lv.level for lv in direct]
        assert info.format == "dicom"
        assert info.mpp == pytest.approx(0.499)
        assert info.tile_size == (500, 500)
        assert info.levels[1].downsample == pytest.approx(2.0, abs=0.01)


@pytest.mark.parametrize("name", ["jpeg.dicom", "jpeg2000.dicom", "raw.dicom"])
def test_single_file_pixels_equal_wsidicom(dicom_root: Path, name: str) -> None:
    path = dicom_root / "google-wsi2dcm-tests" / name
    with open_slide(path) as slide, wsidicom.WsiDicom.open(path) as wsi:
        w, h = slide.level_dimensions[0]
        ours = slide.read_level_region(0, (0, 0), (w, h))
        theirs = np.asarray(wsi.read_region((0, 0), 0, (w, h)))
        # A region across tile borders (tiles are 256 px).
        part = slide.read_region((200, 230), 0, (300, 100))
    assert ours.shape == (715, 957, 3)
    np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(part, theirs[230:330, 200:500])


def test_level_zero_locations_convert_to_level_pixels(dicom_root: Path) -> None:
    folder = dicom_root / "cmu-1-small-region"
    with open_slide(folder) as slide:
        ds = slide.level_downsamples[1]
        level = slide.read_level_region(1, (100, 150), (64, 64))
        via_level0 = slide.read_region(
            (int(100 * ds) + 1, int(150 * ds) + 1), 1, (64, 64)
        )
        np.testing.assert_array_equal(level, via_level0)
        # Outside the level reads black (wsidicom itself would raise).
        w, h = slide.level_dimensions[1]
        edge = slide.read_level_region(1, (w - 10, h - 10), (20, 20))
    assert edge[10:, :].max() == 0
    assert edge[:, 10:].max() == 0
    assert edge[:10, :10].max() > 0


def test_jfif_frames_labelled_rgb_get_true_colours(
    dicom_root: Path, shared_data: Path
) -> None:
    """The sample's JPEG frames are YCbCr (JFIF) though the dataset says RGB."""
    svs = shared_data / "slides" / "aperio" / "CMU-1-Small-Region.svs"
    with open_slide(dicom_root / "cmu-1-small-region") as dcm, open_slide(svs) as ref:
        size = ref.level_dimensions[0]
        a = dcm.read_level_region(0, (0, 0), size).astype(np.int16)
        b = ref.read_level_region(0, (0, 0), size).astype(np.int16)
    # Re-encoded JPEG: close to the source, far from the false colours (~66).
    assert float(np.abs(a - b).mean()) < 6.0


def test_dicom_slide_yields_tissue_tiles(dicom_root: Path) -> None:
    with open_slide(dicom_root / "cmu-1-small-region") as slide:
        grid = plan_tiles(slide, TilingSection())
    assert len(grid.coords) > 20


def test_coarse_dicom_is_refused_at_default_target(dicom_root: Path) -> None:
    with open_slide(dicom_root / "google-wsi2dcm-tests" / "jpeg.dicom") as slide:
        assert slide.mpp == pytest.approx(16.783)
        with pytest.raises(SlideReadError, match=r"too coarse .*tiling\.target_mpp"):
            plan_tiles(slide, TilingSection())
        grid = plan_tiles(slide, TilingSection(target_mpp=16.0, tile_size=64))
    assert grid.coords


def test_truncated_dicom_fails_at_open(dicom_root: Path, tmp_path: Path) -> None:
    src = dicom_root / "cmu-1-small-region" / "level-0-frames-0-30.dcm"
    data = src.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError, match=r"cut\.dcm: file is truncated"):
        open_slide(cut)


def test_text_file_named_dcm_and_empty_folder(tmp_path: Path) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_text("not dicom")
    with pytest.raises(SlideReadError, match="text file"):
        open_slide(bad)
    empty = tmp_path / "series"
    empty.mkdir()
    with pytest.raises(SlideReadError, match="no DICOM files"):
        open_slide(empty)


def test_jpeg_marker_checks() -> None:
    jfif = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    adobe = b"\xff\xd8\xff\xee\x00\x0eAdobe\x00d\x00\x00\x00\x00\x00"
    sof = b"\xff\xc0\x00\x11\x08"
    assert has_jfif_marker(jfif + sof)
    assert not has_adobe_marker(jfif + sof)
    assert has_adobe_marker(adobe + sof)
    assert not has_jfif_marker(adobe + sof)
    assert not has_jfif_marker(b"\xff\xd8" + sof)


def test_folder_with_several_series_is_refused(dicom_root: Path) -> None:
    with pytest.raises(SlideReadError, match="folder holds 3 DICOM series"):
        open_slide(dicom_root / "google-wsi2dcm-tests")
