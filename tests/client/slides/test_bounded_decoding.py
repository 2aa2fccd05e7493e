"""No stored tile is decoded before its own header was checked against the cap.

Hostile slides are made here: a valid tiled TIFF (or a copy of a real DICOM
file) whose one tile's codestream header is patched to declare far more pixels
than the file's tile size. Reading through the public reader refuses it, names
the tile and the cap, and allocates nothing near the declared size.
"""

from __future__ import annotations

import shutil
import struct
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from slidefed.client.prepare.tile_workers import read_tile_chunk
from slidefed.client.prepare.tiling import TileGrid
from slidefed.client.slides import open_slide
from slidefed.client.slides.bounds import TileCheck, TileRefused
from slidefed.client.slides.codestream import CodestreamError
from slidefed.common.errors import SlideDecodeRefused, SlideReadError

CAP_TEXT = r"over the cap of 16,777,216 px per tile \(\[prepare\] max_tile_pixels"


def _tiff(path: Path, arr: np.ndarray, **kwargs: Any) -> Path:
    tifffile.imwrite(
        path,
        arr,
        tile=(256, 256),
        resolution=(20000.0, 20000.0),
        resolutionunit="CENTIMETER",
        **kwargs,
    )
    return path


def _rgb(h: int, w: int) -> np.ndarray:
    rng = np.random.default_rng(4)
    return rng.integers(100, 200, (h, w, 3), dtype=np.uint8)


def _patch_tile(
    path: Path, index: int, marker: bytes, fmt: str, *values: int, skip: int = 0
) -> None:
    """Overwrite fields ``skip`` bytes after ``marker`` inside stored tile ``index``."""
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        offset, count = int(page.dataoffsets[index]), int(page.databytecounts[index])
    data = bytearray(path.read_bytes())
    at = data.index(marker, offset, offset + count) + len(marker) + skip
    struct.pack_into(fmt, data, at, *values)
    path.write_bytes(bytes(data))


def _patch_jpeg_sof(path: Path, index: int, width: int, height: int) -> None:
    # SOF0 of a 3-component frame: FFC0, length 17, precision 8, then Y, X.
    _patch_tile(path, index, b"\xff\xc0\x00\x11\x08", ">HH", height, width)


def _peak_bytes(read: Any) -> int:
    """Peak Python-visible (numpy included) allocation while ``read`` runs."""
    tracemalloc.start()
    try:
        read()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.fixture
def hostile_tiff(tmp_path: Path) -> Path:
    """1000 px square JPEG TIFF; its last (edge, 232 px) tile declares 12000 px."""
    path = _tiff(
        tmp_path / "hostile.tif",
        _rgb(1000, 1000),
        photometric="rgb",
        compression="jpeg",
    )
    _patch_jpeg_sof(path, 15, 12_000, 12_000)
    return path


def test_an_edge_tile_declaring_12000_px_is_refused_before_decoding(
    hostile_tiff: Path,
) -> None:
    with open_slide(hostile_tiff) as slide:
        first = slide.read_level_region(0, (0, 0), (256, 256))  # others still read
        refused: list[SlideDecodeRefused] = []

        def read_edge() -> None:
            with pytest.raises(SlideDecodeRefused) as caught:
                slide.read_level_region(0, (768, 768), (232, 232))
            refused.append(caught.value)

        peak = _peak_bytes(read_edge)
    assert first.shape == (256, 256, 3)
    assert peak < 16 << 20  # 12000 x 12000 x 3 would be 412 MiB
    assert refused[0].path == str(hostile_tiff)
    assert "stored tile 15 of level 0 refused before decoding" in refused[0].reason
    assert "its JPEG header declares 12000 x 12000 px" in refused[0].reason
    with pytest.raises(SlideDecodeRefused, match=CAP_TEXT):
        raise refused[0]


def test_a_header_larger_than_its_tile_is_refused_even_under_the_cap(
    tmp_path: Path,
) -> None:
    path = _tiff(
        tmp_path / "s.tif", _rgb(512, 512), photometric="rgb", compression="jpeg"
    )
    _patch_jpeg_sof(path, 2, 512, 512)
    with (
        open_slide(path) as slide,
        pytest.raises(
            SlideDecodeRefused, match="more than the 256 x 256 px stored tile"
        ),
    ):
        slide.read_level_region(0, (0, 0), (512, 512))


def test_tiles_over_a_smaller_cap_refuse_the_slide_when_it_opens(
    tmp_path: Path,
) -> None:
    path = _tiff(
        tmp_path / "s.tif", _rgb(512, 512), photometric="rgb", compression="jpeg"
    )
    with pytest.raises(
        SlideDecodeRefused,
        match=r"stored tiles of 256 x 256 px \(65,536 px\) cannot be read in "
        r"bounded memory: over the cap of 16,384 px",
    ):
        open_slide(path, max_tile_pixels=128 * 128)
    with open_slide(path, max_tile_pixels=256 * 256) as slide:
        assert slide.read_level_region(0, (0, 0), (512, 512)).shape == (512, 512, 3)


def test_levels_tiffslide_decodes_are_checked_before_it_decodes(
    tmp_path: Path,
) -> None:
    # Greyscale: read through tiffslide's zarr store, which decodes internally.
    grey = _rgb(1000, 1000)[..., 0]
    path = _tiff(
        tmp_path / "grey.tif", grey, photometric="minisblack", compression="jpeg"
    )
    clean = tifffile.imread(path)
    # One component: SOF0 length 11.
    _patch_tile(path, 15, b"\xff\xc0\x00\x0b\x08", ">HH", 12_000, 12_000)
    with open_slide(path) as slide:
        assert slide.stored_tile_size(0) is None  # not the tile-by-tile path
        np.testing.assert_array_equal(
            slide.read_level_region(0, (0, 0), (256, 256))[..., 0], clean[:256, :256]
        )
        with pytest.raises(SlideDecodeRefused, match="12000 x 12000 px"):
            slide.read_level_region(0, (700, 700), (300, 300))


def test_jpeg2000_tiles_are_checked_by_their_siz(tmp_path: Path) -> None:
    path = _tiff(
        tmp_path / "j2k.tif", _rgb(512, 512), photometric="rgb", compression="jpeg2000"
    )
    # SOC, SIZ, then Lsiz and Rsiz, then Xsiz and Ysiz.
    _patch_tile(path, 3, b"\xff\x4f\xff\x51", ">II", 40_000, 40_000, skip=4)
    with open_slide(path) as slide:
        assert slide.read_level_region(0, (0, 0), (256, 256)).shape == (256, 256, 3)
        with pytest.raises(
            SlideDecodeRefused, match="JPEG 2000 header declares 40000 x 40000 px"
        ):
            slide.read_level_region(0, (256, 256), (256, 256))


def test_a_compression_whose_size_cannot_be_checked_is_refused(
    tmp_path: Path,
) -> None:
    path = _tiff(
        tmp_path / "jxl.tif", _rgb(256, 256), photometric="rgb", compression="jpegxl"
    )
    with pytest.raises(SlideDecodeRefused, match="JPEG XL-compressed"):
        open_slide(path)


def test_a_cut_header_is_an_unreadable_tile_not_a_decode(tmp_path: Path) -> None:
    path = _tiff(
        tmp_path / "s.tif", _rgb(512, 512), photometric="rgb", compression="jpeg"
    )
    # The frame header's length runs past the tile's end: never decoded.
    _patch_tile(path, 1, b"\xff\xc0", ">H", 0xFFFF)
    with open_slide(path) as slide, pytest.raises(SlideReadError) as caught:
        slide.read_level_region(0, (256, 0), (256, 256))
    assert not isinstance(caught.value, SlideDecodeRefused)
    assert "runs past the end" in caught.value.reason


def test_the_refusal_crosses_a_worker_process_intact(hostile_tiff: Path) -> None:
    grid = TileGrid(level=0, read_size=256, tile_size=256, mpp=0.5, coords=[])
    with ProcessPoolExecutor(max_workers=1) as pool:
        future = pool.submit(read_tile_chunk, str(hostile_tiff), grid, [(768, 768)])
        with pytest.raises(SlideDecodeRefused, match="12000 x 12000 px") as caught:
            future.result(timeout=60)
    assert caught.value.path == str(hostile_tiff)


def test_the_check_refuses_too_many_components_and_passes_an_honest_tile() -> None:
    import imagecodecs

    honest = bytes(imagecodecs.jpeg8_encode(_rgb(256, 256)))
    check = TileCheck("jpeg", declared=(256, 256))
    assert check(honest) is not None
    five = bytes(
        imagecodecs.jpeg2k_encode(np.zeros((16, 16, 5), np.uint8), codecformat="j2k")
    )
    with pytest.raises(TileRefused, match="5 samples per pixel"):
        TileCheck("j2k", declared=(16, 16))(five)
    with pytest.raises(CodestreamError, match="no SOI"):
        check(b"\x00" * 64)
    assert TileCheck("tags", declared=(256, 256))(b"anything") is None


# ------------------------------------------------------------------ DICOM
def test_a_dicom_frame_declaring_too_much_is_refused(
    shared_data: Path, tmp_path: Path
) -> None:
    pytest.importorskip("wsidicom")
    path = tmp_path / "hostile.dcm"
    shutil.copy(shared_data / "slides/dicom/google-wsi2dcm-tests/jpeg.dicom", path)
    data = bytearray(path.read_bytes())
    sof = data.rindex(b"\xff\xc0\x00\x11\x08") + 5  # the last frame's SOF0
    struct.pack_into(">HH", data, sof, 30_000, 30_000)
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:
        w, h = slide.level_dimensions[0]

        def read_all() -> None:
            with pytest.raises(
                SlideDecodeRefused,
                match=r"frame \(\d+, \d+\) of level 0 refused before decoding: "
                r"its JPEG header declares 30000 x 30000 px",
            ):
                slide.read_level_region(0, (0, 0), (w, h))

        assert _peak_bytes(read_all) < 64 << 20
