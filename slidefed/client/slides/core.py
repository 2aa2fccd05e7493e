"""Slide readers behind one :class:`SlideSource` protocol.

tiffslide reads SVS, NDPI, OME-TIFF and generic tiled pyramidal TIFF; wsidicom
reads DICOM whole-slide images (see :mod:`slidefed.client.slides.dicom`).
:func:`open_slide` picks the reader from the file's content, not its name.

Files are validated when opened, so that a truncated or foreign file fails early
with a :class:`SlideReadError` naming the file and the reason, never later with a
bare ``IndexError`` deep inside a reader.

Pixels are read from the stored tiles directly: the bytes of each stored tile
are read with ``os.pread`` and decoded with imagecodecs, and a region is cut
from the decoded tiles it overlaps. Decoded tiles are kept in a small
least-recently-used cache bounded in bytes, so that neighbouring regions (a row
of tiles, a full-width NDPI band) decode each stored tile once, and memory stays
bounded whatever the slide size.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import struct
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from slidefed.common.errors import SlideReadError

logger = logging.getLogger(__name__)

# What readers raise on bad files (see reference/slides.md section 2).
READ_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    IndexError,
    KeyError,
    RuntimeError,
    NotImplementedError,
    OSError,
    EOFError,
    TypeError,
    AttributeError,
    ZeroDivisionError,
    OverflowError,
    struct.error,
)
_READ_ERRORS = READ_ERRORS  # kept for older imports

#: Bytes of decoded stored tiles one open slide keeps (per process).
TILE_CACHE_BYTES = 128 * 1024 * 1024
#: Largest decoded stored tile (or strip) read; larger ones are refused.
MAX_STORED_TILE_BYTES = 256 * 1024 * 1024

_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")

# Content signatures of files that are not slides we read, with the reason.
_FOREIGN_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"ZISRAWFILE", "Zeiss CZI is an unsupported format; export it as OME-TIFF"),
    (b"\x89PNG", "a PNG image, not a whole-slide image"),
    (b"\xff\xd8\xff", "a plain JPEG image, not a whole-slide image"),
    (b"GIF8", "a GIF image, not a whole-slide image"),
    (b"BM", "a BMP image, not a whole-slide image"),
    (b"%PDF", "a PDF document, not a whole-slide image"),
    (b"PK\x03\x04", "a ZIP archive, not a whole-slide image; unpack it first"),
    (b"\x1f\x8b", "a gzip archive, not a whole-slide image; unpack it first"),
    (b"<?xml", "an XML file, not a whole-slide image"),
)
_FOREIGN_SUFFIXES = {
    ".mrxs": "3DHISTECH MRXS is an unsupported format; export it as OME-TIFF or DICOM",
    ".isyntax": "Philips iSyntax is an unsupported format; export it as DICOM",
    ".vms": "Hamamatsu VMS is an unsupported format; export it as OME-TIFF",
    ".vmu": "Hamamatsu VMU is an unsupported format; export it as OME-TIFF",
    ".czi": "Zeiss CZI is an unsupported format; export it as OME-TIFF",
}

# Compression codes (TIFF tag 259) decoded with imagecodecs directly.
_JPEG = 7
_APERIO_J2K_YCBCR = 33003
_APERIO_J2K_RGB = 33005
_JPEG2000 = 34712


class LevelInfo(BaseModel):
    """One pyramid level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int
    height: int
    downsample: float
    tile_width: int | None = None
    tile_height: int | None = None
    mpp: float | None = None


class SlideInfo(BaseModel):
    """What ``slidefed slide inspect`` reports for one slide."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    format: str
    vendor: str
    level_count: int
    levels: list[LevelInfo]
    mpp: float | None
    tile_size: tuple[int, int] | None


@runtime_checkable
class SlideSource(Protocol):
    """A readable whole-slide image.

    Levels are numbered 0 (full resolution) to ``level_count - 1`` whatever the
    reader; ``level_downsamples`` gives each level's scale relative to level 0.
    Pixels outside a level read as black (0, 0, 0), as in tiffslide and openslide.
    """

    path: Path

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of each level."""

    @property
    def level_downsamples(self) -> list[float]:
        """Downsample of each level relative to level 0."""

    @property
    def mpp(self) -> float | None:
        """Microns per pixel at level 0, or None when the file does not say."""

    def stored_tile_size(self, level: int) -> tuple[int, int] | None:
        """(width, height) of the stored tiles of ``level``, None if not tiled."""

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> NDArray[np.uint8]:
        """Read ``size`` pixels of ``level`` at level-0 ``location`` as (h, w, 3)."""

    def read_level_region(
        self,
        level: int,
        location: tuple[int, int],
        size: tuple[int, int],
        out: NDArray[np.uint8] | None = None,
    ) -> NDArray[np.uint8]:
        """Read ``size`` pixels at ``location`` given in ``level``'s own pixels."""

    def info(self) -> SlideInfo:
        """Describe the slide."""

    def close(self) -> None:
        """Release file handles."""

    def __enter__(self) -> SlideSource:
        """Enter a ``with`` block."""

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the slide."""


@contextlib.contextmanager
def quiet_loggers(*names: str) -> Iterator[None]:
    """Silence reader libraries that log about bad files (paths included).

    The reason reaches the user once, in the :class:`SlideReadError`.
    """
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    for log, _ in saved:
        log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in saved:
            log.setLevel(level)


def _first_ifd_offset(head: bytes) -> int | None:
    """Offset of the first image directory from a TIFF header (None if unknown)."""
    order = "<" if head[:2] == b"II" else ">"
    if head[2:4] in (b"*\x00", b"\x00*") and len(head) >= 8:
        return int(struct.unpack(order + "I", head[4:8])[0])
    if len(head) >= 16:
        return int(struct.unpack(order + "Q", head[8:16])[0])
    return None


# ------------------------------------------------------------------ stored tiles
class _TileCache:
    """Decoded stored tiles, least recently used first out, bounded in bytes."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self._tiles: OrderedDict[tuple[int, int, int], NDArray[np.uint8]] = (
            OrderedDict()
        )

    def get(self, key: tuple[int, int, int]) -> NDArray[np.uint8] | None:
        tile = self._tiles.get(key)
        if tile is not None:
            self._tiles.move_to_end(key)
        return tile

    def put(self, key: tuple[int, int, int], tile: NDArray[np.uint8]) -> None:
        self._tiles[key] = tile
        self.used += tile.nbytes
        while self.used > self.budget and len(self._tiles) > 1:
            _, old = self._tiles.popitem(last=False)
            self.used -= old.nbytes

    def clear(self) -> None:
        self._tiles.clear()
        self.used = 0


def to_rgb(arr: NDArray[Any]) -> NDArray[np.uint8]:
    """(h, w), (h, w, 1), (h, w, 3) or (h, w, 4) uint8 pixels as (h, w, 3)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2), dtype=np.uint8)
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


def box_reduce(arr: NDArray[np.uint8], factor: int) -> NDArray[np.uint8]:
    """Average (h, w, 3) pixels over ``factor`` x ``factor`` blocks (rounded)."""
    from PIL import Image

    if factor == 1:
        return arr
    img = Image.fromarray(np.ascontiguousarray(arr))
    return np.asarray(img.reduce(factor), dtype=np.uint8)


def ycbcr_to_rgb(arr: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Full-range (JFIF) YCbCr to RGB, for JPEG 2000 tiles stored as YCbCr."""
    ycc = arr.astype(np.float32)
    y = ycc[..., 0]
    cb = ycc[..., 1] - 128.0
    cr = ycc[..., 2] - 128.0
    rgb = np.stack(
        [y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1
    )
    return np.asarray(np.clip(np.rint(rgb), 0, 255), dtype=np.uint8)


class StoredTileReader:
    """Regions cut from decoded stored tiles; subclasses say how to decode one.

    Subclasses implement :meth:`_tile_geometry` (stored tile size of a level, or
    None where a level has to be read another way), :meth:`_decode_tile` and
    :meth:`_fallback_region`, and set ``path``.
    """

    path: Path

    def __init__(self, cache_bytes: int = TILE_CACHE_BYTES) -> None:
        self._cache = _TileCache(cache_bytes)
        self.tiles_decoded = 0
        # Set by subclasses once the file is open: (w, h) and downsample per level.
        self._dims: list[tuple[int, int]] = []
        self._downsamples: list[float] = []

    def close(self) -> None:
        """Release file handles (subclasses close their reader)."""
        self._cache.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self._dims)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of each level."""
        return list(self._dims)

    @property
    def level_downsamples(self) -> list[float]:
        """Downsample of each level relative to level 0."""
        return list(self._downsamples)

    # -- to implement

    def _tile_geometry(self, level: int) -> tuple[int, int] | None:
        raise NotImplementedError

    def _decode_tile(
        self, level: int, tx: int, ty: int, out: NDArray[np.uint8] | None = None
    ) -> NDArray[np.uint8]:
        raise NotImplementedError

    def _fallback_region(
        self, level: int, x: int, y: int, w: int, h: int
    ) -> NDArray[np.uint8]:
        raise NotImplementedError

    # -- shared
    def clear_cache(self) -> None:
        """Forget the decoded stored tiles (benchmarks start cold with it)."""
        self._cache.clear()

    def stored_tile_size(self, level: int) -> tuple[int, int] | None:
        """(width, height) of the stored tiles of ``level``, None if not tiled."""
        return self._tile_geometry(level)

    def _check_level(self, level: int) -> None:
        if not 0 <= level < len(self._dims):
            raise SlideReadError(
                str(self.path),
                f"level {level} does not exist (the slide has "
                f"{len(self._dims)} levels)",
            )

    def _tile(self, level: int, tx: int, ty: int) -> NDArray[np.uint8]:
        key = (level, tx, ty)
        tile = self._cache.get(key)
        if tile is None:
            tile = self._decode_tile(level, tx, ty)
            self.tiles_decoded += 1
            self._cache.put(key, tile)
        return tile

    def _uncached_tile(self, level: int, tx: int, ty: int) -> NDArray[np.uint8]:
        cached = self._cache.get((level, tx, ty))
        if cached is not None:
            return cached
        self.tiles_decoded += 1
        return self._decode_tile(level, tx, ty)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> NDArray[np.uint8]:
        """Read ``size`` pixels of ``level`` at level-0 ``location`` as (h, w, 3).

        The location converts to level pixels as tiffslide does,
        ``int(x / downsample)``.
        """
        self._check_level(level)
        ds = self._downsamples[level]
        lx, ly = int(location[0] / ds), int(location[1] / ds)
        return self.read_level_region(level, (lx, ly), size)

    def read_level_region(
        self,
        level: int,
        location: tuple[int, int],
        size: tuple[int, int],
        out: NDArray[np.uint8] | None = None,
    ) -> NDArray[np.uint8]:
        """Read ``size`` (w, h) pixels at ``location`` in ``level``'s own pixels.

        Parameters
        ----------
        level : int
            Pyramid level.
        location : tuple of int
            (x, y) of the top-left pixel, in pixels of ``level``.
        size : tuple of int
            (width, height) to read.
        out : numpy.ndarray, optional
            A C-contiguous (h, w, 3) uint8 array to fill (saves a copy).

        Returns
        -------
        numpy.ndarray
            (h, w, 3) uint8; pixels outside the level are black.

        Raises
        ------
        SlideReadError
            If a stored tile cannot be read or decoded.
        """
        self._check_level(level)
        lx, ly = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if out is None:
            out = np.empty((h, w, 3), dtype=np.uint8)
        width, height = self._dims[level]
        x0, y0 = max(lx, 0), max(ly, 0)
        x1, y1 = min(lx + w, width), min(ly + h, height)
        if x0 > lx or y0 > ly or x1 < lx + w or y1 < ly + h:
            out[...] = 0
        if x0 >= x1 or y0 >= y1:
            return out
        geometry = self._tile_geometry(level)
        try:
            if geometry is None:
                out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._fallback_region(
                    level, x0, y0, x1 - x0, y1 - y0
                )
                return out
            tw, th = geometry
            if (
                x0 % tw == 0
                and y0 % th == 0
                and x1 - x0 == tw
                and y1 - y0 == th
                and w == tw
                and h == th
                and out.flags.c_contiguous
                and self._cache.get((level, x0 // tw, y0 // th)) is None
            ):
                # One whole stored tile: decode straight into ``out``.
                self._decode_tile(level, x0 // tw, y0 // th, out)
                self.tiles_decoded += 1
                return out
            for ty in range(y0 // th, (y1 - 1) // th + 1):
                ty0 = ty * th
                sy0, sy1 = max(y0, ty0), min(y1, ty0 + th)
                inner_y = sy0 == ty0 and sy1 == ty0 + th
                for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                    tx0 = tx * tw
                    sx0, sx1 = max(x0, tx0), min(x1, tx0 + tw)
                    if inner_y and sx0 == tx0 and sx1 == tx0 + tw:
                        # Wholly inside this region: no other tile of a grid
                        # needs it, so it is not cached.
                        tile = self._uncached_tile(level, tx, ty)
                    else:
                        tile = self._tile(level, tx, ty)
                    out[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx] = tile[
                        sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0
                    ]
        except SlideReadError:
            raise
        except READ_ERRORS as exc:
            raise SlideReadError(
                str(self.path),
                f"level {level} region at ({lx}, {ly}) unreadable "
                f"({type(exc).__name__}: {exc})",
            ) from exc
        return out

    def read_level_region_reduced(
        self,
        level: int,
        location: tuple[int, int],
        size: tuple[int, int],
        factor: int,
        out: NDArray[np.uint8] | None = None,
    ) -> NDArray[np.uint8]:
        """Read ``factor * size`` level pixels at ``location``, averaged in
        ``factor`` x ``factor`` blocks: (h, w, 3) for ``size`` (w, h).

        Each stored tile is reduced as soon as it is decoded, while it is in
        the CPU cache, instead of assembling the full-resolution region first.
        The result equals reducing the full region, pixel for pixel.

        Raises
        ------
        SlideReadError
            If a stored tile cannot be read or decoded.
        """
        self._check_level(level)
        lx, ly = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if out is None:
            out = np.empty((h, w, 3), dtype=np.uint8)
        width, height = self._dims[level]
        x1, y1 = lx + w * factor, ly + h * factor
        geometry = self._tile_geometry(level)
        if (
            geometry is None
            or factor < 2
            or lx < 0
            or ly < 0
            or x1 > width
            or y1 > height
            or lx % factor
            or ly % factor
            or geometry[0] % factor
            or geometry[1] % factor
        ):
            full = self.read_level_region(level, (lx, ly), (w * factor, h * factor))
            out[...] = box_reduce(full, factor)
            return out
        tw, th = geometry
        try:
            for ty in range(ly // th, (y1 - 1) // th + 1):
                ty0 = ty * th
                sy0, sy1 = max(ly, ty0), min(y1, ty0 + th)
                inner_y = sy0 == ty0 and sy1 == ty0 + th
                for tx in range(lx // tw, (x1 - 1) // tw + 1):
                    tx0 = tx * tw
                    sx0, sx1 = max(lx, tx0), min(x1, tx0 + tw)
                    if inner_y and sx0 == tx0 and sx1 == tx0 + tw:
                        tile = self._uncached_tile(level, tx, ty)
                    else:
                        tile = self._tile(level, tx, ty)
                    piece = tile[sy0 - ty0 : sy1 - ty0, sx0 - tx0 : sx1 - tx0]
                    out[
                        (sy0 - ly) // factor : (sy1 - ly) // factor,
                        (sx0 - lx) // factor : (sx1 - lx) // factor,
                    ] = box_reduce(piece, factor)
        except SlideReadError:
            raise
        except READ_ERRORS as exc:
            raise SlideReadError(
                str(self.path),
                f"level {level} region at ({lx}, {ly}) unreadable "
                f"({type(exc).__name__}: {exc})",
            ) from exc
        return out


# ----------------------------------------------------------------------- TIFF
class _TiffLevel:
    """What the fast path needs to know about one TIFF level page."""

    def __init__(self, page: Any, width: int, height: int) -> None:
        self.page = page
        self.width = width
        self.height = height
        if page.is_tiled:
            self.tw, self.th = int(page.tilewidth), int(page.tilelength)
        else:
            self.tw, self.th = width, min(int(page.rowsperstrip or height), height)
        self.nx = math.ceil(width / self.tw)
        self.offsets = [int(o) for o in page.dataoffsets]
        self.counts = [int(c) for c in page.databytecounts]
        self.compression = int(page.compression)
        self.decode_into: Callable[[bytes, NDArray[np.uint8] | None], Any] | None = None
        jpegheader = getattr(page, "jpegheader", None)
        if self.compression == _JPEG and jpegheader is None and page.is_tiled:
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
            if int(page.photometric) in (2, 6) and "outcolorspace" in kwargs:
                jpeg8_decode = imagecodecs.jpeg8_decode

                def decode_jpeg(
                    data: bytes, out: NDArray[np.uint8] | None
                ) -> NDArray[np.uint8]:
                    return jpeg8_decode(data, out=out, **kwargs)

                self.decode_into = decode_jpeg
        elif self.compression in (_APERIO_J2K_RGB, _JPEG2000, _APERIO_J2K_YCBCR):
            import imagecodecs

            jpeg2k_decode = imagecodecs.jpeg2k_decode
            ycbcr = self.compression == _APERIO_J2K_YCBCR

            def decode_j2k(
                data: bytes, out: NDArray[np.uint8] | None
            ) -> NDArray[np.uint8]:
                arr = jpeg2k_decode(data, numthreads=1)
                if ycbcr:
                    arr = ycbcr_to_rgb(arr)
                if out is not None:
                    out[...] = arr
                    return out
                return arr

            self.decode_into = decode_j2k


class TiffSlideSource(StoredTileReader):
    """A TIFF-family slide (SVS, NDPI, OME-TIFF, generic tiled TIFF).

    Metadata come from tiffslide; pixels from the stored tiles, decoded with
    imagecodecs where the compression allows it (JPEG, JPEG 2000) and with
    tifffile's own decoder otherwise.
    """

    def __init__(self, path: Path, cache_bytes: int = TILE_CACHE_BYTES) -> None:
        import tiffslide

        super().__init__(cache_bytes)
        self.path = Path(path)
        if not self.path.is_file():
            raise SlideReadError(str(self.path), "file not found")
        self._check_header()
        try:
            with quiet_loggers("tifffile", "tiffslide"):
                self._slide = tiffslide.TiffSlide(str(self.path))
                dims = self._slide.level_dimensions
                props = self._slide.properties
        except READ_ERRORS as exc:
            raise SlideReadError(
                str(self.path), f"not a readable slide ({type(exc).__name__}: {exc})"
            ) from exc
        if not dims:
            self._slide.close()
            raise SlideReadError(str(self.path), "no image levels found")
        self._props: dict[str, Any] = dict(props)
        self._dims = [(int(w), int(h)) for w, h in dims]
        self._downsamples = [float(d) for d in self._slide.level_downsamples]
        self._fd = -1
        try:
            self._levels = self._check_structure()
            self._fd = os.open(self.path, os.O_RDONLY)
        except BaseException:
            self._slide.close()
            raise

    def _check_header(self) -> None:
        """A first image directory past the end of the file means a cut copy."""
        size = self.path.stat().st_size
        with self.path.open("rb") as fh:
            head = fh.read(16)
        offset = _first_ifd_offset(head)
        if offset is not None and offset >= size:
            raise SlideReadError(
                str(self.path),
                f"file is truncated (its first image directory is at byte {offset} "
                f"of a {size}-byte file); copy the slide again from the scanner store",
            )

    def _check_structure(self) -> list[_TiffLevel | None]:
        """Check pixel type and truncation; describe each level for the fast path."""
        size = self.path.stat().st_size
        tf = self._slide.ts_tifffile
        idx = self._props.get("tiffslide.series-index") or 0
        axes = self._props.get("tiffslide.series-axes")
        levels: list[_TiffLevel | None] = []
        try:
            series = tf.series[idx]
            if np.dtype(series.dtype) != np.uint8:
                raise SlideReadError(
                    str(self.path),
                    f"unsupported pixel type {np.dtype(series.dtype)}; only 8-bit "
                    "RGB or greyscale slides are supported",
                )
            for level, (w, h) in zip(
                series.levels, self._slide.level_dimensions, strict=False
            ):
                page = level.keyframe
                ends = [
                    o + c
                    for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)
                ]
                if not ends or max(ends) > size:
                    raise SlideReadError(
                        str(self.path),
                        f"file is truncated ({size} bytes, level data ends at "
                        f"{max(ends) if ends else '?'}); copy the slide again "
                        "from the scanner store",
                    )
                tile_px = (
                    int(page.tilewidth) * int(page.tilelength)
                    if page.is_tiled
                    else int(w) * min(int(page.rowsperstrip or h), int(h))
                )
                if tile_px * 3 > MAX_STORED_TILE_BYTES:
                    raise SlideReadError(
                        str(self.path),
                        f"stored tiles or strips of {tile_px * 3 >> 20} MiB cannot be "
                        "read in bounded memory; save the slide as a tiled pyramid",
                    )
                fast = (
                    axes == "YXS"
                    and len(level.pages) == 1
                    and int(page.planarconfig) == 1
                    and int(page.samplesperpixel) == 3
                    and not page.extrasamples
                    and int(page.bitspersample) == 8
                )
                levels.append(_TiffLevel(page, int(w), int(h)) if fast else None)
        except SlideReadError:
            raise
        except (IndexError, AttributeError, KeyError, ValueError, TypeError) as exc:
            raise SlideReadError(
                str(self.path), f"unreadable TIFF structure ({exc})"
            ) from exc
        return levels

    @property
    def format(self) -> str:
        """File format, from the content: svs, ndpi, ome-tiff, ... or tiff."""
        tf = self._slide.ts_tifffile
        for flag, name in (
            ("is_svs", "svs"),
            ("is_ndpi", "ndpi"),
            ("is_ome", "ome-tiff"),
            ("is_scn", "scn"),
            ("is_philips", "philips-tiff"),
            ("is_bif", "bif"),
            ("is_qpi", "qptiff"),
        ):
            if getattr(tf, flag, False):
                return name
        return "tiff"

    @property
    def mpp(self) -> float | None:
        """Microns per pixel at level 0, or None when the file does not say."""
        value = self._props.get("tiffslide.mpp-x")
        return float(value) if value else None

    def _tile_geometry(self, level: int) -> tuple[int, int] | None:
        lv = self._levels[level] if level < len(self._levels) else None
        return (lv.tw, lv.th) if lv is not None else None

    def _decode_tile(
        self, level: int, tx: int, ty: int, out: NDArray[np.uint8] | None = None
    ) -> NDArray[np.uint8]:
        lv = self._levels[level]
        if lv is None:
            raise SlideReadError(str(self.path), f"level {level} has no stored tiles")
        index = ty * lv.nx + tx
        count = lv.counts[index]
        tw = min(lv.tw, lv.width - tx * lv.tw)
        th = min(lv.th, lv.height - ty * lv.th)
        if count == 0:  # a sparse file leaves empty tiles out
            arr = np.zeros((th, tw, 3), np.uint8)
            if out is not None:
                out[...] = 0
                return out
            return arr
        data = os.pread(self._fd, count, lv.offsets[index])
        if len(data) != count:
            raise SlideReadError(
                str(self.path),
                f"tile {index} of level {level} is cut short; the file is truncated",
            )
        if lv.decode_into is not None:
            full_size = tw == lv.tw and th == lv.th
            arr = lv.decode_into(data, out if full_size else None)
            if arr.shape[0] < th or arr.shape[1] < tw:
                raise SlideReadError(
                    str(self.path), f"tile {index} of level {level} decodes too small"
                )
            if full_size and out is not None:
                return out
            tile = to_rgb(arr[:th, :tw])
        else:
            decoded, _, _ = lv.page.decode(
                data,
                index,
                jpegtables=lv.page.jpegtables,
                jpegheader=getattr(lv.page, "jpegheader", None),
            )
            if decoded is None:
                raise SlideReadError(
                    str(self.path), f"tile {index} of level {level} is empty"
                )
            tile = to_rgb(np.asarray(decoded)[0][:th, :tw])
        if out is not None:
            out[...] = tile
            return out
        return tile

    def _fallback_region(
        self, level: int, x: int, y: int, w: int, h: int
    ) -> NDArray[np.uint8]:
        axes = self._props.get("tiffslide.series-axes")
        arr: Any = self._slide.zarr_group[str(level)]
        if axes == "CYX":
            data = np.moveaxis(np.asarray(arr[:, y : y + h, x : x + w]), 0, -1)
        else:
            data = np.asarray(arr[y : y + h, x : x + w])
        return to_rgb(data)

    def info(self) -> SlideInfo:
        """Describe the slide."""
        levels = []
        mpp0 = self.mpp
        for i, ((w, h), ds) in enumerate(
            zip(self.level_dimensions, self.level_downsamples, strict=True)
        ):
            tw = self._props.get(f"tiffslide.level[{i}].tile-width")
            th = self._props.get(f"tiffslide.level[{i}].tile-height")
            levels.append(
                LevelInfo(
                    width=w,
                    height=h,
                    downsample=round(ds, 4),
                    tile_width=int(tw) if tw else None,
                    tile_height=int(th) if th else None,
                    mpp=round(mpp0 * ds, 5) if mpp0 else None,
                )
            )
        first = levels[0]
        tile = (
            (first.tile_width, first.tile_height)
            if first.tile_width and first.tile_height
            else None
        )
        vendor = self._props.get("tiffslide.vendor") or "generic-tiff"
        return SlideInfo(
            path=str(self.path),
            format=self.format,
            vendor=str(vendor),
            level_count=self.level_count,
            levels=levels,
            mpp=self.mpp,
            tile_size=tile,
        )

    def close(self) -> None:
        """Release file handles."""
        self._cache.clear()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._slide.close()


# ------------------------------------------------------------------- dispatch
def is_dicom_file(path: Path) -> bool:
    """Whether a file starts with the DICOM preamble and ``DICM`` magic."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def sniff_format(path: Path) -> str:
    """``"tiff"`` or ``"dicom"`` from the content of ``path`` (file or folder).

    Raises
    ------
    SlideReadError
        If the path is missing, empty, or holds something that is not a slide
        in a supported format; the reason says what it is where that is known.
    """
    path = Path(path)
    if path.is_dir():
        if any(p.is_file() and is_dicom_file(p) for p in sorted(path.iterdir())):
            return "dicom"
        raise SlideReadError(str(path), "folder holds no DICOM files")
    if not path.is_file():
        raise SlideReadError(str(path), "file not found")
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise SlideReadError(str(path), f"cannot read the file ({exc})") from exc
    if not head:
        raise SlideReadError(str(path), "empty file, not a slide")
    if head[:4] in _TIFF_MAGICS:
        return "tiff"
    if len(head) == 132 and head[128:132] == b"DICM":
        return "dicom"
    suffix = path.suffix.lower()
    if suffix in _FOREIGN_SUFFIXES:
        raise SlideReadError(str(path), _FOREIGN_SUFFIXES[suffix])
    for magic, reason in _FOREIGN_MAGICS:
        if head.startswith(magic):
            raise SlideReadError(str(path), reason)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        raise SlideReadError(
            str(path), "not a readable slide (a text file, not TIFF or DICOM)"
        )
    raise SlideReadError(
        str(path), "not a readable slide (unrecognised format, neither TIFF nor DICOM)"
    )


def open_slide(path: Path) -> SlideSource:
    """Open a slide with the reader that fits its content.

    TIFF-family files (SVS, NDPI, OME-TIFF, tiled TIFF) open with tiffslide;
    DICOM files, or a folder holding one DICOM series, with wsidicom.

    Raises
    ------
    SlideReadError
        If the file is missing, truncated, not a slide, or in an unsupported
        format.
    """
    path = Path(path)
    kind = sniff_format(path)
    if kind == "dicom":
        from slidefed.client.slides.dicom import DicomSlideSource

        return DicomSlideSource(path)
    return TiffSlideSource(path)


__all__ = [
    "MAX_STORED_TILE_BYTES",
    "READ_ERRORS",
    "TILE_CACHE_BYTES",
    "LevelInfo",
    "SlideInfo",
    "SlideSource",
    "StoredTileReader",
    "TiffSlideSource",
    "box_reduce",
    "is_dicom_file",
    "open_slide",
    "sniff_format",
    "to_rgb",
    "ycbcr_to_rgb",
]
