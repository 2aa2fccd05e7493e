"""The pixel cap per stored tile, and the header check made before each decode.

A reader decodes a stored tile (a TIFF tile or strip, a DICOM frame) only
after :class:`TileCheck` has read the tile's own codestream header
(:mod:`~slidefed.client.slides.codestream`) and found that it declares no more
than the tile size the file declares, at most :data:`MAX_COMPONENTS` samples per
pixel, and no more pixels than the site's cap (``[prepare] max_tile_pixels`` in
``site.toml``). Compressions whose decoder writes into a buffer of the declared
size (none, LZW, deflate, zstd, RLE, ...) are bounded by the declared size
alone; compressions whose size sits in a header not parsed here (JPEG XL,
JPEG XR) are refused when the slide is opened.

Two outcomes besides passing:

* :class:`TileRefused`: the header is well formed and declares too much. The
  reader raises :class:`~slidefed.common.errors.SlideDecodeRefused` and
  preparation skips the whole slide.
* :class:`~slidefed.client.slides.codestream.CodestreamError`: the header is
  cut or corrupt; the tile is unreadable (left out like any unreadable tile)
  and is never handed to the decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from slidefed.client.config import MAX_TILE_PIXELS
from slidefed.client.slides.codestream import (
    CodestreamError,
    Dims,
    j2k_dims,
    jpeg_dims,
    jpeg_frame,
    png_dims,
    webp_dims,
)

#: Samples per pixel a tile may declare (RGBA at most).
MAX_COMPONENTS = 4
#: Bits per sample a tile may declare.
MAX_BITS = 16
#: Bytes of a tile read for its header where the tile itself is not read (64
#: JPEG segments of the largest size fit in it).
HEADER_PREFIX = 4 << 20

Family = Literal["jpeg", "j2k", "webp", "png", "tags"]

#: TIFF compressions (tag 259) whose decoded size is read from a header.
TIFF_FAMILIES: dict[int, Family] = {
    6: "jpeg",  # old-style JPEG: its frame header sits in the JPEG tables
    7: "jpeg",
    33007: "jpeg",  # ALT_JPEG
    34892: "jpeg",  # lossy JPEG (DNG)
    33003: "j2k",  # Aperio JPEG 2000, YCbCr
    33004: "j2k",
    33005: "j2k",  # Aperio JPEG 2000, RGB
    34712: "j2k",
    34933: "png",
    50001: "webp",
}
#: TIFF compressions whose decoder takes its size from a header read nowhere here.
TIFF_UNCHECKED = {
    22610: "JPEG XR",
    34934: "JPEG XR",
    50002: "JPEG XL",
    52546: "JPEG XL",
}

#: DICOM transfer syntaxes and how their frames are checked.
DICOM_FAMILIES: dict[str, Family] = {
    "1.2.840.10008.1.2": "tags",
    "1.2.840.10008.1.2.1": "tags",
    "1.2.840.10008.1.2.1.99": "tags",  # deflated explicit VR little endian
    "1.2.840.10008.1.2.2": "tags",
    "1.2.840.10008.1.2.5": "tags",  # RLE: decodes to the Rows x Columns tags
    "1.2.840.10008.1.2.4.50": "jpeg",
    "1.2.840.10008.1.2.4.51": "jpeg",
    "1.2.840.10008.1.2.4.57": "jpeg",  # lossless JPEG
    "1.2.840.10008.1.2.4.70": "jpeg",
    "1.2.840.10008.1.2.4.80": "jpeg",  # JPEG-LS (SOF55)
    "1.2.840.10008.1.2.4.81": "jpeg",
    "1.2.840.10008.1.2.4.90": "j2k",
    "1.2.840.10008.1.2.4.91": "j2k",
    "1.2.840.10008.1.2.4.201": "j2k",  # HTJ2K
    "1.2.840.10008.1.2.4.202": "j2k",
    "1.2.840.10008.1.2.4.203": "j2k",
}

_PARSERS: dict[Family, Callable[[bytes], Dims]] = {
    "jpeg": jpeg_dims,
    "j2k": j2k_dims,
    "webp": webp_dims,
    "png": png_dims,
}
_NAMES: dict[Family, str] = {
    "jpeg": "JPEG",
    "j2k": "JPEG 2000",
    "webp": "WebP",
    "png": "PNG",
    "tags": "",
}
_CAP_SETTING = "[prepare] max_tile_pixels in site.toml"


class TileRefused(CodestreamError):
    """A well-formed header that declares more than the slide or the cap allow."""


def over_cap(width: int, height: int, cap: int) -> str | None:
    """Why stored tiles the file declares as ``width`` x ``height`` px are refused.

    Returns
    -------
    str or None
        The reason, naming the cap and its setting; None within the cap.
    """
    if width * height <= cap:
        return None
    return (
        f"stored tiles of {width} x {height} px ({width * height:,} px) cannot be "
        f"read in bounded memory: over the cap of {cap:,} px per tile "
        f"({_CAP_SETTING})"
    )


class TileCheck:
    """The check of one level's stored tiles, made before each is decoded.

    Parameters
    ----------
    family : str
        How the tiles' size is read: ``jpeg``, ``j2k``, ``webp``, ``png``, or
        ``tags`` (the decoder writes the declared size; nothing to read).
    declared : tuple of int
        (width, height) of a stored tile as the file declares it.
    cap : int
        The site's cap on pixels per tile.
    tables : bytes, optional
        TIFF JPEGTables (an abbreviated JPEG stream) of the level.
    header : bytes, optional
        A JPEG header that tiles are decoded behind (NDPI): their bytes then
        are entropy-coded data alone, and the frame header is this one's.

    Raises
    ------
    CodestreamError
        If ``tables`` or ``header`` is corrupt, or declares too much.
    """

    def __init__(
        self,
        family: Family,
        *,
        declared: tuple[int, int],
        cap: int = MAX_TILE_PIXELS,
        tables: bytes | None = None,
        header: bytes | None = None,
    ) -> None:
        self.family = family
        self.declared = declared
        self.cap = cap
        self.header_only = family == "jpeg" and header is not None
        # Frame headers shared by every tile of the level (JPEG tables, NDPI).
        shared = [jpeg_frame(part) for part in (tables, header) if part]
        if self.header_only and shared[-1] is None:
            raise CodestreamError("the level's JPEG header holds no frame header")
        self.shared = [d for d in shared if d is not None]
        for dims in self.shared:
            self._bound(dims)

    @property
    def reads_header(self) -> bool:
        """Whether each tile's own bytes have to be read for the check."""
        return self.family != "tags" and not self.header_only

    def _bound(self, dims: Dims) -> None:
        fmt, (tw, th) = _NAMES[self.family], self.declared
        says = f"its {fmt} header declares {dims.width} x {dims.height} px"
        if dims.pixels > self.cap:
            raise TileRefused(
                f"{says}, over the cap of {self.cap:,} px per tile ({_CAP_SETTING})"
            )
        if dims.width > tw or dims.height > th:
            raise TileRefused(
                f"{says}, more than the {tw} x {th} px stored tile the file declares"
            )
        if dims.components > MAX_COMPONENTS:
            raise TileRefused(
                f"its {fmt} header declares {dims.components} samples per pixel "
                f"(at most {MAX_COMPONENTS})"
            )
        if dims.bits > MAX_BITS:
            raise TileRefused(
                f"its {fmt} header declares {dims.bits} bits per sample "
                f"(at most {MAX_BITS})"
            )

    def __call__(self, data: bytes) -> Dims | None:
        """Check one tile's bytes (or their first :data:`HEADER_PREFIX` bytes).

        Returns
        -------
        Dims or None
            What the tile's header declares; None where only the declared size
            counts (``tags``) or the level's shared header was checked already.

        Raises
        ------
        TileRefused
            If the header declares more than the tile, the cap or the limits.
        CodestreamError
            If the header is missing, cut or corrupt.
        """
        if not self.reads_header:
            return None
        if self.family == "jpeg" and self.shared and data[:2] != b"\xff\xd8":
            # Old-style JPEG: the tile is entropy-coded data behind the tables.
            return None
        dims = (
            jpeg_frame(data) if self.family == "jpeg" else _PARSERS[self.family](data)
        )
        if dims is None:
            if not self.shared:
                raise CodestreamError("JPEG tile holds no frame header")
            return None
        self._bound(dims)
        return dims


__all__ = [
    "DICOM_FAMILIES",
    "HEADER_PREFIX",
    "MAX_BITS",
    "MAX_COMPONENTS",
    "TIFF_FAMILIES",
    "TIFF_UNCHECKED",
    "Family",
    "TileCheck",
    "TileRefused",
    "over_cap",
]
