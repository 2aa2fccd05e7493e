"""Codestream headers read before decoding: real encoded bytes and hostile ones."""

from __future__ import annotations

import io
import struct

import imagecodecs
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from slidefed.client.slides.codestream import (
    CodestreamError,
    Dims,
    j2k_dims,
    jpeg_dims,
    jpeg_frame,
    png_dims,
    webp_dims,
)


def _rgb(w: int, h: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _pil_jpeg(arr: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def _sof_at(data: bytes) -> int:
    """Offset of the first SOF0/SOF2 marker of a JPEG stream (not inside data)."""
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return pos


def _patch_sof(data: bytes, width: int, height: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(">HH", out, _sof_at(data) + 5, height, width)
    return bytes(out)


# ------------------------------------------------------------------- JPEG
@pytest.mark.parametrize(
    ("width", "height", "kwargs", "components"),
    [
        (232, 256, {}, 3),
        (1, 1, {}, 3),
        (640, 17, {"progressive": True}, 3),  # SOF2
        (300, 200, {"icc_profile": b"\x00" * 60_000}, 3),  # a 60 kB APP2 first
        (96, 80, {"exif": b"Exif\x00\x00" + b"\x01" * 4000}, 3),
    ],
)
def test_pil_jpegs_give_their_size(
    width: int, height: int, kwargs: dict[str, object], components: int
) -> None:
    data = _pil_jpeg(_rgb(width, height), **kwargs)
    assert jpeg_dims(data) == Dims(width, height, components, 8)


def test_greyscale_and_imagecodecs_jpegs_give_their_size() -> None:
    grey = _pil_jpeg(_rgb(70, 50)[..., 0])
    assert jpeg_dims(grey) == Dims(70, 50, 1, 8)
    encoded = bytes(imagecodecs.jpeg8_encode(_rgb(256, 232), level=85))
    assert jpeg_dims(encoded) == Dims(256, 232, 3, 8)
    lossless = bytes(imagecodecs.jpeg8_encode(_rgb(40, 30), lossless=True))
    assert jpeg_dims(lossless) == Dims(40, 30, 3, 8)  # SOF3


def test_jpeg_ls_frame_header_is_read() -> None:
    data = bytes(imagecodecs.jpegls_encode(_rgb(33, 21)))
    assert jpeg_dims(data) == Dims(33, 21, 3, 8)  # SOF55


def _split_tables(data: bytes) -> tuple[bytes, bytes]:
    """A JPEG as TIFF stores it: JPEGTables, then an abbreviated image stream."""
    tables, image, pos = [b"\xff\xd8"], [b"\xff\xd8"], 2
    while data[pos + 1] != 0xDA:
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        segment = data[pos : pos + 2 + length]
        (tables if data[pos + 1] in (0xDB, 0xC4) else image).append(segment)
        pos += 2 + length
    return b"".join([*tables, b"\xff\xd9"]), b"".join([*image, data[pos:]])


def test_abbreviated_streams_with_jpeg_tables() -> None:
    arr = _rgb(256, 256)
    full = bytes(imagecodecs.jpeg8_encode(arr, level=90))
    tables, image = _split_tables(full)
    # A real abbreviated pair: libjpeg decodes the image with the tables.
    decoded = imagecodecs.jpeg8_decode(image, tables=tables)
    np.testing.assert_array_equal(decoded, imagecodecs.jpeg8_decode(full))
    assert jpeg_frame(tables) is None  # tables only: no frame header
    assert jpeg_dims(image) == Dims(256, 256, 3, 8)
    with pytest.raises(CodestreamError, match="no frame header"):
        jpeg_dims(tables)


def test_a_lying_frame_header_is_read_as_it_lies() -> None:
    data = _patch_sof(_pil_jpeg(_rgb(232, 256)), 12_000, 12_000)
    assert jpeg_dims(data) == Dims(12_000, 12_000, 3, 8)
    assert jpeg_dims(_patch_sof(data, 65_535, 65_535)).pixels == 65_535**2


def test_every_cut_before_the_frame_header_is_refused_after_it_read() -> None:
    data = _pil_jpeg(_rgb(64, 48), icc_profile=b"\x07" * 3000)
    sof_end = _sof_at(data) + 2 + int.from_bytes(data[_sof_at(data) + 2 :][:2], "big")
    for cut in range(sof_end):
        with pytest.raises(CodestreamError):
            jpeg_dims(data[:cut])
    assert jpeg_dims(data[:sof_end]) == Dims(64, 48, 3, 8)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "no SOI"),
        (b"\x89PNG\r\n\x1a\n", "no SOI"),
        (b"\xff\xd8\xff\xda\x00\x08" + bytes(6), "scan starts before"),
        (b"\xff\xd8\xff\xe0\x00\x01", "runs past the end"),  # length 1
        (b"\xff\xd8\xff\xe0\xff\xff" + bytes(10), "runs past the end"),
        (b"\xff\xd8\x00\x00", "no marker at byte 2"),
        (b"\xff\xd8\xff\x00", "stuffed byte"),
        (b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x00\x01\x00\x01\x01\x11\x00", "DNL"),
        (
            b"\xff\xd8\xff\xc0\x00\x0b\x08\x00\x10\x00\x10\x03\x01\x11\x00",
            "does not fit",
        ),
        (b"\xff\xd8\xff\xc0\x00\x05\x08\x00\x10", "too short"),
        (b"\xff\xd8\xff\xff\xff", "ends before"),
    ],
    ids=[
        "empty",
        "png",
        "scan-first",
        "length-1",
        "length-past-end",
        "garbage",
        "stuffed",
        "height-0",
        "3-components-in-1",
        "short-sof",
        "fill-to-end",
    ],
)
def test_hostile_jpeg_headers_are_refused(data: bytes, needle: str) -> None:
    with pytest.raises(CodestreamError, match=needle):
        jpeg_dims(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_another_error(tail: bytes) -> None:
    for data in (tail, b"\xff\xd8" + tail, b"\xff\x4f\xff\x51" + tail):
        for parse in (jpeg_dims, j2k_dims, webp_dims, png_dims):
            try:
                dims = parse(data)
            except CodestreamError:
                continue
            assert dims.width > 0
            assert dims.height > 0


# -------------------------------------------------------------- JPEG 2000
@pytest.mark.parametrize("codec", ["j2k", "jp2"])
def test_jpeg2000_codestreams_and_files_give_their_size(codec: str) -> None:
    data = bytes(imagecodecs.jpeg2k_encode(_rgb(300, 170), level=50, codecformat=codec))
    assert j2k_dims(data) == Dims(300, 170, 3, 8)
    assert j2k_dims(bytes(imagecodecs.jpeg2k_encode(_rgb(20, 9)[..., 0]))) == Dims(
        20, 9, 1, 8
    )


def _siz_at(data: bytes | bytearray) -> int:
    return data.index(b"\xff\x4f\xff\x51") + 4


def test_a_lying_siz_is_read_and_a_broken_one_refused() -> None:
    data = bytearray(imagecodecs.jpeg2k_encode(_rgb(64, 64), codecformat="j2k"))
    siz = _siz_at(data)
    struct.pack_into(">II", data, siz + 4, 60_000, 60_000)  # Xsiz, Ysiz
    assert j2k_dims(bytes(data)) == Dims(60_000, 60_000, 3, 8)
    struct.pack_into(">I", data, siz + 12, 70_000)  # XOsiz past Xsiz
    with pytest.raises(CodestreamError, match="empty image"):
        j2k_dims(bytes(data))
    struct.pack_into(">H", data, siz + 36, 0)  # Csiz = 0
    with pytest.raises(CodestreamError, match="does not fit 0 components"):
        j2k_dims(bytes(data))
    for cut in range(siz + 38):
        with pytest.raises(CodestreamError):
            j2k_dims(bytes(data[:cut]))


def test_a_jp2_whose_header_and_codestream_disagree_is_refused() -> None:
    data = bytearray(imagecodecs.jpeg2k_encode(_rgb(64, 48), codecformat="jp2"))
    ihdr = data.index(b"ihdr") + 4
    struct.pack_into(">II", data, ihdr, 48, 64)  # HEIGHT, WIDTH as encoded
    assert j2k_dims(bytes(data)).width == 64
    struct.pack_into(">II", data, ihdr, 9000, 9000)
    with pytest.raises(CodestreamError, match="disagree"):
        j2k_dims(bytes(data))
    box = data.index(b"jp2h") - 4
    struct.pack_into(">I", data, box, 0x7FFF_FFFF)  # a box past the end
    with pytest.raises(CodestreamError, match="runs past the end"):
        j2k_dims(bytes(data))


# -------------------------------------------------------------- WebP, PNG
@pytest.mark.parametrize("lossless", [False, True])
def test_webp_gives_its_size(lossless: bool) -> None:
    data = bytes(imagecodecs.webp_encode(_rgb(150, 70), lossless=lossless))
    dims = webp_dims(data)
    assert (dims.width, dims.height) == (150, 70)


def test_png_gives_its_size_and_a_foreign_stream_is_refused() -> None:
    assert png_dims(bytes(imagecodecs.png_encode(_rgb(31, 17)))) == Dims(31, 17, 3, 8)
    with pytest.raises(CodestreamError, match="not a PNG"):
        png_dims(_pil_jpeg(_rgb(8, 8)))
    with pytest.raises(CodestreamError, match="not a WebP"):
        webp_dims(b"RIFF\x00\x00\x00\x00WAVE" + bytes(20))
