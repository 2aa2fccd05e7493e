"""One level of a TIFF slide as the reader sees it: tile geometry, check, decoder.

:class:`TiffLevel` holds where a level's stored tiles lie, the header check
made before each is decoded (:class:`~slidefed.client.slides.bounds.TileCheck`)
and, for levels decoded tile by tile, imagecodecs' decoder of their bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from slidefed.client.slides.bounds import TileCheck
from slidefed.client.slides.pixels import ycbcr_to_rgb

# Compression codes (TIFF tag 259) decoded with imagecodecs directly.
_JPEG = 7
_APERIO_J2K_YCBCR = 33003
_APERIO_J2K_RGB = 33005
_JPEG2000 = 34712

#: Decodes one stored tile's bytes, into ``out`` when given.
TileDecoder = Callable[[bytes, NDArray[np.uint8] | None], Any]


def _jpeg_decoder(page: Any) -> TileDecoder | None:
    """imagecodecs' JPEG decoder for an RGB or YCbCr page, None otherwise."""
    import imagecodecs
    from tifffile.tifffile import jpeg_decode_colorspace

    colorspace, outcolorspace = jpeg_decode_colorspace(
        int(page.photometric),
        int(page.planarconfig),
        tuple(page.extrasamples),
        bool(page.is_jfif),
    )
    kwargs: dict[str, Any] = {"tables": page.jpegtables}
    if colorspace == 2:
        kwargs["colorspace"] = "RGB"
    if outcolorspace == 2:
        kwargs["outcolorspace"] = "RGB"
    if int(page.photometric) not in (2, 6) or "outcolorspace" not in kwargs:
        return None
    jpeg8_decode = imagecodecs.jpeg8_decode

    def decode_jpeg(data: bytes, out: NDArray[np.uint8] | None) -> NDArray[np.uint8]:
        return jpeg8_decode(data, out=out, **kwargs)

    return decode_jpeg


def _j2k_decoder(compression: int) -> TileDecoder:
    """imagecodecs' JPEG 2000 decoder; Aperio's YCbCr flavour is made RGB."""
    import imagecodecs

    jpeg2k_decode = imagecodecs.jpeg2k_decode
    ycbcr = compression == _APERIO_J2K_YCBCR

    def decode_j2k(data: bytes, out: NDArray[np.uint8] | None) -> NDArray[np.uint8]:
        arr = jpeg2k_decode(data, numthreads=1)
        if ycbcr:
            arr = ycbcr_to_rgb(arr)
        if out is not None:
            out[...] = arr
            return out
        return arr

    return decode_j2k


def tile_shape(page: Any) -> tuple[int, int]:
    """(width, height) of a page's stored tiles, or of its strips."""
    width, height = int(page.imagewidth), int(page.imagelength)
    if page.is_tiled:
        return int(page.tilewidth), int(page.tilelength)
    return width, min(int(page.rowsperstrip or height), height)


class TiffLevel:
    """One TIFF level: its tiles' geometry and check, and the fast path's decoder.

    ``fast`` levels are decoded here tile by tile; the others are read by
    tiffslide, after :meth:`segments` under each region were checked.
    """

    def __init__(
        self, page: Any, width: int, height: int, *, pages: list[Any], fast: bool
    ) -> None:
        self.page = page
        self.width = width
        self.height = height
        self.fast = fast
        self.tw, self.th = tile_shape(page)
        self.nx = math.ceil(width / self.tw)
        self.offsets = [int(o) for o in page.dataoffsets]
        self.counts = [int(c) for c in page.databytecounts]
        # Every page of the level (channels, planes) with its tiles' places.
        self.pages = [
            ([int(o) for o in p.dataoffsets], [int(c) for c in p.databytecounts])
            for p in pages
        ]
        self.checked: set[tuple[int, int]] = set()
        self.compression = int(page.compression)
        self.check: TileCheck = TileCheck("tags", declared=(self.tw, self.th))
        self.decode_into: TileDecoder | None = None
        jpegheader = getattr(page, "jpegheader", None)
        if not fast:
            return
        if self.compression == _JPEG and jpegheader is None and page.is_tiled:
            self.decode_into = _jpeg_decoder(page)
        elif self.compression in (_APERIO_J2K_RGB, _JPEG2000, _APERIO_J2K_YCBCR):
            self.decode_into = _j2k_decoder(self.compression)

    def segments(self, x: int, y: int, w: int, h: int) -> list[int]:
        """Indices of the stored tiles (or strips) of a page under a region."""
        page = self.page
        full_w, full_h = int(page.imagewidth), int(page.imagelength)
        nx, ny = math.ceil(full_w / self.tw), math.ceil(full_h / self.th)
        planes = int(page.samplesperpixel) if int(page.planarconfig) == 2 else 1
        per_plane = nx * ny
        if per_plane * planes != len(self.offsets):  # a layout not planned here
            return list(range(len(self.offsets)))
        cols = range(max(x, 0) // self.tw, min((x + w - 1) // self.tw, nx - 1) + 1)
        rows = range(max(y, 0) // self.th, min((y + h - 1) // self.th, ny - 1) + 1)
        return [
            p * per_plane + ty * nx + tx
            for p in range(planes)
            for ty in rows
            for tx in cols
        ]


__all__ = ["TiffLevel", "TileDecoder", "tile_shape"]
