"""Decoded sizes read from a codestream's own header, before anything is decoded.

A decoder allocates what the codestream declares, not what the file's tags say:
a JPEG tile whose frame header claims 65535 x 65535 px makes libjpeg allocate
about 12.9 GB for a tile the TIFF says is 256 px square. The parsers here read
only the headers (bytes in, dimensions out) so that a reader can compare them
with the tile size it expects, and refuse, before calling the decoder.

* JPEG (and JPEG-LS, lossless JPEG): the first frame header (SOF0..SOF15 but
  DHT, JPG and DAC; and SOF55 of JPEG-LS), walking over APPn, DQT, DHT, COM and
  other segments; abbreviated streams (TIFF's JPEGTables) are supported by
  :func:`jpeg_frame` returning None for a tables-only stream.
* JPEG 2000: the SIZ marker segment of a J2K codestream, and for a JP2 file the
  ``ihdr`` box inside ``jp2h`` checked against the SIZ of its ``jp2c`` box.
* WebP (RIFF ``VP8 ``, ``VP8L``, ``VP8X``) and PNG (``IHDR``).

Every parser raises :class:`CodestreamError` with the reason on a truncated,
foreign or inconsistent header; it never decodes entropy-coded data.
"""

from __future__ import annotations

from typing import NamedTuple


class CodestreamError(ValueError):
    """A codestream header is missing, truncated or inconsistent.

    Internal to the readers: they turn it into a
    :class:`~slidefed.common.errors.SlideReadError` naming the slide and tile.
    """


class Dims(NamedTuple):
    """What a codestream header says it decodes to."""

    width: int
    height: int
    components: int
    bits: int

    @property
    def pixels(self) -> int:
        """Width times height."""
        return self.width * self.height


# JPEG markers that stand alone (no length field): TEM, RST0..7, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8, 0xD9}
# Frame headers: SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC); JPEG-LS SOF55.
_SOF = {*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC} | {0xF7}
_SOS, _EOI = 0xDA, 0xD9


def _u16(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 2], "big")


def _u32(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 4], "big")


def _jpeg_sof(data: bytes, pos: int, length: int) -> Dims:
    """The frame header whose segment (after the marker) starts at ``pos``."""
    if length < 8:
        raise CodestreamError(f"JPEG frame header of {length} bytes is too short")
    bits, height, width, ncomp = (
        data[pos + 2],
        _u16(data, pos + 3),
        _u16(data, pos + 5),
        data[pos + 7],
    )
    if ncomp == 0 or length != 8 + 3 * ncomp:
        raise CodestreamError(
            f"JPEG frame header of {length} bytes does not fit {ncomp} components"
        )
    if width == 0 or height == 0:
        # Height 0 means "set later by a DNL marker": the size is unknown here.
        raise CodestreamError(
            f"JPEG frame header declares {width} x {height} px (a size set later "
            "by a DNL marker is not supported)"
        )
    return Dims(width, height, ncomp, bits)


def jpeg_frame(data: bytes) -> Dims | None:
    """The first frame header of a JPEG stream; None for a tables-only stream.

    Parameters
    ----------
    data : bytes
        A JPEG interchange or abbreviated stream, starting with SOI.

    Returns
    -------
    Dims or None
        The frame's size, components and sample precision; None when the stream
        ends (EOI) before any frame header, as TIFF JPEGTables do.

    Raises
    ------
    CodestreamError
        If the stream does not start with SOI, is cut before its frame header,
        has a corrupt segment, or reaches a scan before a frame header.
    """
    if data[:2] != b"\xff\xd8":
        raise CodestreamError("not a JPEG stream (no SOI marker)")
    pos, end = 2, len(data)
    while True:
        if pos >= end:
            raise CodestreamError("JPEG stream ends before its frame header")
        if data[pos] != 0xFF:
            raise CodestreamError(f"corrupt JPEG stream (no marker at byte {pos})")
        while pos < end and data[pos] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos >= end:
            raise CodestreamError("JPEG stream ends before its frame header")
        marker = data[pos]
        pos += 1
        if marker == _EOI:
            return None
        if marker in _STANDALONE:
            continue
        if marker == 0x00:
            raise CodestreamError(f"corrupt JPEG stream (stuffed byte at {pos - 1})")
        if pos + 2 > end:
            raise CodestreamError("JPEG stream cut inside a segment header")
        length = _u16(data, pos)
        if length < 2 or pos + length > end:
            raise CodestreamError(
                f"JPEG segment of {length} bytes at byte {pos} runs past the end"
            )
        if marker in _SOF:
            return _jpeg_sof(data, pos, length)
        if marker == _SOS:
            raise CodestreamError("JPEG scan starts before any frame header")
        pos += length


def jpeg_dims(data: bytes) -> Dims:
    """The frame header of a JPEG stream that must hold one.

    Raises
    ------
    CodestreamError
        As :func:`jpeg_frame`, and if the stream holds no frame header.
    """
    dims = jpeg_frame(data)
    if dims is None:
        raise CodestreamError("JPEG stream holds no frame header")
    return dims


# ---------------------------------------------------------------- JPEG 2000
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def _siz(data: bytes, start: int = 0) -> Dims:
    """The SIZ segment of the J2K codestream at ``start`` (SOC, then SIZ)."""
    if data[start : start + 4] != _J2K_SOC_SIZ:
        raise CodestreamError("not a JPEG 2000 codestream (no SOC and SIZ markers)")
    pos = start + 4
    if pos + 38 > len(data):
        raise CodestreamError("JPEG 2000 codestream cut inside its SIZ segment")
    length = _u16(data, pos)
    xsiz, ysiz, xosiz, yosiz = (_u32(data, pos + 4 + 4 * i) for i in range(4))
    ncomp = _u16(data, pos + 36)
    if ncomp == 0 or length != 38 + 3 * ncomp:
        raise CodestreamError(
            f"JPEG 2000 SIZ segment of {length} bytes does not fit {ncomp} components"
        )
    if pos + length > len(data):
        raise CodestreamError("JPEG 2000 codestream cut inside its SIZ segment")
    width, height = xsiz - xosiz, ysiz - yosiz
    if width <= 0 or height <= 0:
        raise CodestreamError(
            f"JPEG 2000 SIZ declares an empty image ({xsiz} - {xosiz} x "
            f"{ysiz} - {yosiz})"
        )
    comps = data[pos + 38 : pos + length]
    bits = max((comps[i] & 0x7F) + 1 for i in range(0, len(comps), 3))
    if any(comps[i] == 0 for j in (1, 2) for i in range(j, len(comps), 3)):
        raise CodestreamError("JPEG 2000 SIZ declares a component subsampling of 0")
    return Dims(width, height, ncomp, bits)


def _boxes(data: bytes, start: int, end: int) -> dict[bytes, tuple[int, int]]:
    """First box of each type between ``start`` and ``end``: (content start, end)."""
    found: dict[bytes, tuple[int, int]] = {}
    pos = start
    while pos + 8 <= end:
        length, kind = _u32(data, pos), data[pos + 4 : pos + 8]
        header = 8
        if length == 1:
            if pos + 16 > end:
                raise CodestreamError("JP2 box cut inside its length")
            length, header = int.from_bytes(data[pos + 8 : pos + 16], "big"), 16
        elif length == 0:
            length = end - pos
        if length < header or pos + length > end:
            raise CodestreamError(f"JP2 box {kind!r} runs past the end of its parent")
        found.setdefault(kind, (pos + header, pos + length))
        pos += length
    return found


def _jp2(data: bytes) -> Dims:
    """A JP2 file's image header, checked against its codestream's SIZ."""
    top = _boxes(data, 0, len(data))
    if b"jp2h" not in top or b"jp2c" not in top:
        raise CodestreamError("JP2 file without a header (jp2h) or codestream (jp2c)")
    header = _boxes(data, *top[b"jp2h"])
    if b"ihdr" not in header:
        raise CodestreamError("JP2 header box without an image header (ihdr)")
    start, end = header[b"ihdr"]
    if end - start < 14:
        raise CodestreamError("JP2 image header (ihdr) is too short")
    height, width, ncomp = (
        _u32(data, start),
        _u32(data, start + 4),
        _u16(data, start + 8),
    )
    siz = _siz(data[: top[b"jp2c"][1]], top[b"jp2c"][0])
    if (width, height, ncomp) != (siz.width, siz.height, siz.components):
        raise CodestreamError(
            f"JP2 image header ({width} x {height} px, {ncomp} components) and "
            f"codestream ({siz.width} x {siz.height} px, {siz.components}) disagree"
        )
    return siz


def j2k_dims(data: bytes) -> Dims:
    """Image size of a JPEG 2000 codestream (J2K) or file (JP2).

    Raises
    ------
    CodestreamError
        If the data are neither, or their header is cut or inconsistent.
    """
    if data[:12] == _JP2_SIGNATURE:
        return _jp2(data)
    return _siz(data)


# ---------------------------------------------------------------- WebP, PNG
def webp_dims(data: bytes) -> Dims:
    """Canvas size of a WebP stream (lossy, lossless or extended).

    Raises
    ------
    CodestreamError
        If the data are not WebP or the first chunk is cut or unknown.
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise CodestreamError("not a WebP stream (no RIFF WEBP header)")
    kind, body = data[12:16], 20
    if kind == b"VP8X":
        width = int.from_bytes(data[body + 4 : body + 7], "little") + 1
        height = int.from_bytes(data[body + 7 : body + 10], "little") + 1
        return Dims(width, height, 4, 8)
    if kind == b"VP8L":
        if data[body] != 0x2F:
            raise CodestreamError("WebP lossless stream without its signature")
        bits = int.from_bytes(data[body + 1 : body + 5], "little")
        return Dims((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, 4, 8)
    if kind == b"VP8 ":
        if data[body + 3 : body + 6] != b"\x9d\x01\x2a":
            raise CodestreamError("WebP lossy stream without its start code")
        width = int.from_bytes(data[body + 6 : body + 8], "little") & 0x3FFF
        height = int.from_bytes(data[body + 8 : body + 10], "little") & 0x3FFF
        if width == 0 or height == 0:
            raise CodestreamError(f"WebP stream declares {width} x {height} px")
        return Dims(width, height, 3, 8)
    raise CodestreamError(f"WebP stream with an unknown first chunk {kind!r}")


def png_dims(data: bytes) -> Dims:
    """Image size of a PNG stream, from its IHDR chunk.

    Raises
    ------
    CodestreamError
        If the data are not PNG or the IHDR chunk is cut or invalid.
    """
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR" or len(data) < 26:
        raise CodestreamError("not a PNG stream (no signature and IHDR chunk)")
    width, height = _u32(data, 16), _u32(data, 20)
    channels = {0: 1, 2: 3, 3: 4, 4: 2, 6: 4}.get(data[25])
    if channels is None or width == 0 or height == 0:
        raise CodestreamError(
            f"PNG header declares {width} x {height} px, colour type {data[25]}"
        )
    return Dims(width, height, channels, data[24])


__all__ = [
    "CodestreamError",
    "Dims",
    "j2k_dims",
    "jpeg_dims",
    "jpeg_frame",
    "png_dims",
    "webp_dims",
]
