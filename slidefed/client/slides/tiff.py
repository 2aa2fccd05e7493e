"""TIFF-family slides (SVS, NDPI, OME-TIFF, generic tiled pyramidal TIFF).

tiffslide reads the metadata and checks the structure; the pixels come from the
stored tiles (see :mod:`slidefed.client.slides.stored_tiles`), whose bytes are
read with ``os.pread`` and decoded with imagecodecs where the compression
allows it (JPEG, JPEG 2000), with tifffile's own decoder otherwise.

No tile reaches a decoder before its own codestream header was checked
(:mod:`~slidefed.client.slides.bounds`): a tile declaring more pixels than the
file's tile size or the site's cap makes the read raise
:class:`~slidefed.common.errors.SlideDecodeRefused`. Levels tiffslide reads
(through tifffile's zarr store, which decodes internally) have the headers of
the tiles under each region read and checked first, with ``os.pread``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from slidefed.client.config import MAX_TILE_PIXELS
from slidefed.client.slides.base import (
    READ_ERRORS,
    LevelInfo,
    SlideInfo,
    quiet_loggers,
)
from slidefed.client.slides.bounds import (
    HEADER_PREFIX,
    TIFF_FAMILIES,
    TIFF_UNCHECKED,
    TileCheck,
    TileRefused,
    over_cap,
)
from slidefed.client.slides.codestream import CodestreamError
from slidefed.client.slides.pixels import to_rgb
from slidefed.client.slides.stored_tiles import TILE_CACHE_BYTES, StoredTileReader
from slidefed.client.slides.tiff_levels import TiffLevel, tile_shape
from slidefed.common.errors import SlideDecodeRefused, SlideReadError


def _first_ifd_offset(head: bytes) -> int | None:
    """Offset of the first image directory from a TIFF header (None if unknown)."""
    order = "<" if head[:2] == b"II" else ">"
    if head[2:4] in (b"*\x00", b"\x00*") and len(head) >= 8:
        return int(struct.unpack(order + "I", head[4:8])[0])
    if len(head) >= 16:
        return int(struct.unpack(order + "Q", head[8:16])[0])
    return None


class TiffSlideSource(StoredTileReader):
    """A TIFF-family slide (SVS, NDPI, OME-TIFF, generic tiled TIFF).

    Metadata come from tiffslide; pixels from the stored tiles, decoded with
    imagecodecs where the compression allows it (JPEG, JPEG 2000) and with
    tifffile's own decoder otherwise.
    """

    def __init__(
        self,
        path: Path,
        cache_bytes: int = TILE_CACHE_BYTES,
        *,
        max_tile_pixels: int = MAX_TILE_PIXELS,
    ) -> None:
        import tiffslide

        super().__init__(cache_bytes)
        self.path = Path(path)
        self.max_tile_pixels = max_tile_pixels
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

    def _check_structure(self) -> list[TiffLevel]:
        """Check pixel type and truncation; describe each level for the fast path."""
        size = self.path.stat().st_size
        tf = self._slide.ts_tifffile
        idx = self._props.get("tiffslide.series-index") or 0
        axes = self._props.get("tiffslide.series-axes")
        try:
            series = tf.series[idx]
            if np.dtype(series.dtype) != np.uint8:
                raise SlideReadError(
                    str(self.path),
                    f"unsupported pixel type {np.dtype(series.dtype)}; only 8-bit "
                    "RGB or greyscale slides are supported",
                )
            return [
                self._check_level_page(level, int(w), int(h), size, axes)
                for level, (w, h) in zip(
                    series.levels, self._slide.level_dimensions, strict=False
                )
            ]
        except SlideReadError:
            raise
        except (IndexError, AttributeError, KeyError, ValueError, TypeError) as exc:
            raise SlideReadError(
                str(self.path), f"unreadable TIFF structure ({exc})"
            ) from exc

    def _check_level_page(
        self, level: Any, w: int, h: int, size: int, axes: Any
    ) -> TiffLevel:
        """Check one level's data lies in the file and its tiles are bounded."""
        page = level.keyframe
        ends = [
            o + c for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)
        ]
        if not ends or max(ends) > size:
            raise SlideReadError(
                str(self.path),
                f"file is truncated ({size} bytes, level data ends at "
                f"{max(ends) if ends else '?'}); copy the slide again "
                "from the scanner store",
            )
        too_big = over_cap(*tile_shape(page), self.max_tile_pixels)
        if too_big is not None:
            hint = "" if page.is_tiled else "; save the slide as a tiled pyramid"
            raise SlideDecodeRefused(str(self.path), too_big + hint)
        fast = (
            axes == "YXS"
            and len(level.pages) == 1
            and int(page.planarconfig) == 1
            and int(page.samplesperpixel) == 3
            and not page.extrasamples
            and int(page.bitspersample) == 8
        )
        lv = TiffLevel(page, w, h, pages=list(level.pages), fast=fast)
        lv.check = self._tile_check(page, lv)
        return lv

    def _tile_check(self, page: Any, lv: TiffLevel) -> TileCheck:
        """The header check of a level's tiles; refuses unchecked compressions."""
        if lv.compression in TIFF_UNCHECKED:
            raise SlideDecodeRefused(
                str(self.path),
                f"its tiles are {TIFF_UNCHECKED[lv.compression]}-compressed, whose "
                "decoded size cannot be checked before decoding; convert the slide "
                "to JPEG or JPEG 2000 tiles",
            )
        try:
            return TileCheck(
                TIFF_FAMILIES.get(lv.compression, "tags"),
                declared=(lv.tw, lv.th),
                cap=self.max_tile_pixels,
                tables=page.jpegtables or None,
                header=getattr(page, "jpegheader", None),
            )
        except TileRefused as exc:
            raise SlideDecodeRefused(
                str(self.path), f"its JPEG tables are refused: {exc}"
            ) from exc
        except CodestreamError as exc:
            raise SlideReadError(
                str(self.path), f"its JPEG tables are unreadable ({exc})"
            ) from exc

    def _checked(self, level: int, index: int, data: bytes) -> None:
        """Check one stored tile's header before it is decoded.

        Raises
        ------
        SlideDecodeRefused
            If the header declares more than the tile size or the site's cap.
        CodestreamError
            If the header is cut or corrupt (the tile is not decoded; the
            region read reports it as unreadable).
        """
        try:
            self._levels[level].check(data)
        except TileRefused as exc:
            raise SlideDecodeRefused(
                str(self.path),
                f"stored tile {index} of level {level} refused before decoding: {exc}",
            ) from exc

    def _check_region_tiles(self, level: int, x: int, y: int, w: int, h: int) -> None:
        """Check the headers of the tiles tiffslide is about to decode for a region."""
        lv = self._levels[level]
        if not lv.check.reads_header:
            return
        for page_no, (offsets, counts) in enumerate(lv.pages):
            for index in lv.segments(x, y, w, h):
                if index >= len(counts) or not counts[index]:
                    continue
                if (page_no, index) in lv.checked:
                    continue
                data = os.pread(
                    self._fd, min(counts[index], HEADER_PREFIX), offsets[index]
                )
                self._checked(level, index, data)
                lv.checked.add((page_no, index))

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
        return (lv.tw, lv.th) if lv is not None and lv.fast else None

    def _decode_tile(
        self, level: int, tx: int, ty: int, out: NDArray[np.uint8] | None = None
    ) -> NDArray[np.uint8]:
        lv = self._levels[level]
        if not lv.fast:
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
        self._checked(level, index, data)
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
            tile = to_rgb(self._decode_with_tifffile(lv, level, index, data)[:th, :tw])
        if out is not None:
            out[...] = tile
            return out
        return tile

    def _decode_with_tifffile(
        self, lv: TiffLevel, level: int, index: int, data: bytes
    ) -> NDArray[Any]:
        """A stored tile imagecodecs is not given directly, as tifffile decodes it."""
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
        pixels: NDArray[Any] = np.asarray(decoded)[0]
        return pixels

    def _fallback_region(
        self, level: int, x: int, y: int, w: int, h: int
    ) -> NDArray[np.uint8]:
        self._check_region_tiles(level, x, y, w, h)
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


__all__ = ["TiffSlideSource"]
