"""DICOM whole-slide images (one file, or a folder holding one series).

wsidicom parses the series and hands out the stored frames; the frames are
decoded here with imagecodecs, like the TIFF tiles, so that both readers give
the same pixels for the same codestream.

Two differences from the TIFF readers are hidden behind the
:class:`~slidefed.client.slides.base.SlideSource` protocol:

* wsidicom's ``level`` is a log2 scale index (level 3 means 1/8) and its
  locations are in that level's pixels. Here levels are numbered 0 to
  ``level_count - 1`` over the levels the series holds, and
  :meth:`DicomSlideSource.read_region` takes level-0 locations.
* wsidicom raises on reads outside a level; here those pixels are black.

Bounded decoding: a frame is decoded only after its codestream header (JPEG,
JPEG-LS, JPEG 2000) was read and found to declare no more than the level's
frame size and the site's cap on pixels per tile
(:mod:`~slidefed.client.slides.bounds`); a transfer syntax whose decoded size
cannot be read that way is refused when the slide is opened.

Colour: a JPEG frame that carries a JFIF marker holds YCbCr samples (the JFIF
standard says so), whatever the DICOM PhotometricInterpretation claims; such
frames are converted to RGB. Frames labelled RGB without a JFIF or Adobe marker
are taken as RGB.
"""

from __future__ import annotations

import logging
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
    DICOM_FAMILIES,
    TileCheck,
    TileRefused,
    over_cap,
)
from slidefed.client.slides.pixels import to_rgb, ycbcr_to_rgb
from slidefed.client.slides.sniff import is_dicom_file
from slidefed.client.slides.stored_tiles import TILE_CACHE_BYTES, StoredTileReader
from slidefed.common.errors import SlideDecodeRefused, SlideReadError

logger = logging.getLogger(__name__)

_JPEG_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
_J2K_SYNTAXES = {
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
}
_RAW_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
_YBR = {"YBR_FULL", "YBR_FULL_422"}


def _dicom_errors() -> tuple[type[BaseException], ...]:
    import pydicom.errors
    import wsidicom.errors as werr  # type: ignore[import-untyped, import-not-found, unused-ignore]

    return (
        *READ_ERRORS,
        werr.WsiDicomError,
        werr.WsiDicomFileError,
        werr.WsiDicomMatchError,
        werr.WsiDicomUidDuplicateError,
        werr.WsiDicomNotFoundError,
        werr.WsiDicomOutOfBoundsError,
        werr.WsiDicomStrictRequirementError,
        werr.WsiDicomNotSupportedError,
        pydicom.errors.InvalidDicomError,
    )


def _app_segments(data: bytes) -> list[tuple[int, bytes]]:
    """(marker, first bytes) of the APPn segments before a JPEG's frame header."""
    segments: list[tuple[int, bytes]] = []
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA or (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xCC)):
            break
        if 0xE0 <= marker <= 0xEF:
            segments.append((marker, data[pos + 4 : pos + 10]))
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return segments


def has_jfif_marker(data: bytes) -> bool:
    """Whether a JPEG codestream carries a JFIF APP0 segment (so it is YCbCr)."""
    return any(
        m == 0xE0 and head.startswith(b"JFIF\x00") for m, head in _app_segments(data)
    )


def has_adobe_marker(data: bytes) -> bool:
    """Whether a JPEG codestream carries an Adobe APP14 segment."""
    return any(
        m == 0xEE and head.startswith(b"Adobe") for m, head in _app_segments(data)
    )


class _DicomLevel:
    """Decoding facts of one DICOM level."""

    def __init__(self, level: Any) -> None:
        image_data = level.default_instance.image_data
        self.scale = int(level.level)
        self.width = int(level.size.width)
        self.height = int(level.size.height)
        self.tw = int(level.tile_size.width)
        self.th = int(level.tile_size.height)
        self.nx = int(level.tiled_size.width)
        self.ny = int(level.tiled_size.height)
        self.syntax = str(image_data.transfer_syntax)
        self.photometric = str(image_data.photometric_interpretation)
        self.samples = int(image_data.samples_per_pixel)
        self.bits = int(image_data.bits)
        planar = getattr(level.datasets[0], "PlanarConfiguration", 0)
        self.planar = int(planar or 0)
        self.mpp = float(level.mpp.width) if level.mpp is not None else None
        self.check = TileCheck("tags", declared=(self.tw, self.th))


class DicomSlideSource(StoredTileReader):
    """A DICOM whole-slide image read with wsidicom.

    Parameters
    ----------
    path : Path
        A DICOM file, or a folder holding the files of one series (one file per
        pyramid level is usual). Levels whose tile size differs from the base
        level are left out by wsidicom (it logs a warning).
    """

    format = "dicom"

    def __init__(
        self,
        path: Path,
        cache_bytes: int = TILE_CACHE_BYTES,
        *,
        max_tile_pixels: int = MAX_TILE_PIXELS,
    ) -> None:
        super().__init__(cache_bytes)
        self.path = Path(path)
        self.max_tile_pixels = max_tile_pixels
        try:
            from wsidicom import WsiDicom  # type: ignore[import-untyped, import-not-found, unused-ignore]
        except ImportError as exc:
            raise SlideReadError(
                str(self.path),
                "DICOM slides need the 'dicom' extra: pip install 'slidefed[dicom]'",
            ) from exc
        self._errors = _dicom_errors()
        if not self.path.exists():
            raise SlideReadError(str(self.path), "file not found")
        if self.path.is_dir():
            self._check_one_series()
        try:
            with quiet_loggers("wsidicom", "pydicom"):
                self._wsi = WsiDicom.open(self.path)
        except self._errors as exc:
            raise SlideReadError(
                str(self.path),
                f"not a readable DICOM slide ({type(exc).__name__}: {exc})",
            ) from exc
        self._finish_open()

    def _finish_open(self) -> None:
        """Describe and check the levels of the open ``self._wsi``."""
        try:
            with quiet_loggers("wsidicom", "pydicom"):
                self._levels = self._describe()
                self._check_frames()
            # Levels wsidicom keeps; downsample = mean of the w and h ratios.
            w0, h0 = self._levels[0].width, self._levels[0].height
            self._dims = [(lv.width, lv.height) for lv in self._levels]
            self._downsamples = [
                (w0 / lv.width + h0 / lv.height) / 2.0 for lv in self._levels
            ]
        except BaseException:
            self._wsi.close()
            raise

    def _check_one_series(self) -> None:
        """A folder must hold one series: wsidicom would silently pick one."""
        import pydicom

        series: set[str] = set()
        for f in sorted(self.path.iterdir()):
            if not (f.is_file() and is_dicom_file(f)):
                continue
            try:
                ds = pydicom.dcmread(
                    f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]
                )
            except self._errors:
                continue  # wsidicom skips it too; the levels decide below
            series.add(str(ds.get("SeriesInstanceUID", "")))
        if len(series) > 1:
            raise SlideReadError(
                str(self.path),
                f"folder holds {len(series)} DICOM series; give each slide (series) "
                "its own folder, or name a single file",
            )

    def _describe(self) -> list[_DicomLevel]:
        try:
            levels = sorted(self._wsi.levels, key=lambda lv: int(lv.level))
            described = [_DicomLevel(lv) for lv in levels]
        except self._errors as exc:
            raise SlideReadError(
                str(self.path), f"unreadable DICOM structure ({exc})"
            ) from exc
        if not described:
            raise SlideReadError(str(self.path), "no image levels found")
        for lv in described:
            if lv.bits != 8 or lv.samples not in (1, 3):
                raise SlideReadError(
                    str(self.path),
                    f"unsupported pixel type ({lv.bits} bits, {lv.samples} samples); "
                    "only 8-bit RGB or greyscale slides are supported",
                )
            lv.check = self._frame_check(lv)
        return described

    def _frame_check(self, lv: _DicomLevel) -> TileCheck:
        """The header check of a level's frames; refuses what cannot be checked."""
        too_big = over_cap(lv.tw, lv.th, self.max_tile_pixels)
        if too_big is not None:
            raise SlideDecodeRefused(str(self.path), too_big)
        family = DICOM_FAMILIES.get(lv.syntax)
        if family is None:
            raise SlideDecodeRefused(
                str(self.path),
                f"transfer syntax {lv.syntax} is not one whose decoded size can be "
                "checked before decoding; export the slide with JPEG, JPEG 2000 or "
                "uncompressed frames",
            )
        return TileCheck(family, declared=(lv.tw, lv.th), cap=self.max_tile_pixels)

    def _checked(self, lv: _DicomLevel, tx: int, ty: int, data: bytes) -> None:
        """Check one frame's header before it is decoded.

        A cut or corrupt header raises its
        :class:`~slidefed.client.slides.codestream.CodestreamError`, which the
        caller reports as an unreadable frame.
        """
        try:
            lv.check(data)
        except TileRefused as exc:
            raise SlideDecodeRefused(
                str(self.path),
                f"frame ({tx}, {ty}) of level {lv.scale} refused before decoding: "
                f"{exc}",
            ) from exc

    def _check_frames(self) -> None:
        """Read the last frame of every level: catches truncated files at open."""
        for lv in self._levels:
            try:
                data = self._encoded(lv, lv.nx - 1, lv.ny - 1)
            except self._errors as exc:
                raise SlideReadError(
                    str(self.path),
                    f"file is truncated or damaged (last frame of level {lv.scale} "
                    f"unreadable: {type(exc).__name__}); copy the slide again",
                ) from exc
            if not data:
                raise SlideReadError(
                    str(self.path), f"last frame of level {lv.scale} is empty"
                )

    def _encoded(self, lv: _DicomLevel, tx: int, ty: int) -> bytes:
        return bytes(
            self._wsi.read_encoded_tile(
                lv.scale, (tx, ty), crop_to_image_boundary=False
            )
        )

    # -- protocol
    @property
    def mpp(self) -> float | None:
        """Microns per pixel at level 0, or None when the file does not say."""
        return self._levels[0].mpp

    @property
    def scales(self) -> list[int]:
        """wsidicom's level number (log2 scale) of each level."""
        return [lv.scale for lv in self._levels]

    def _tile_geometry(self, level: int) -> tuple[int, int] | None:
        lv = self._levels[level]
        return (lv.tw, lv.th)

    def _decode_tile(
        self, level: int, tx: int, ty: int, out: NDArray[np.uint8] | None = None
    ) -> NDArray[np.uint8]:
        import imagecodecs

        lv = self._levels[level]
        tw = min(lv.tw, lv.width - tx * lv.tw)
        th = min(lv.th, lv.height - ty * lv.th)
        try:
            data = self._encoded(lv, tx, ty)
            self._checked(lv, tx, ty, data)
            arr: NDArray[np.uint8]
            if lv.syntax in _JPEG_SYNTAXES:
                kwargs: dict[str, Any] = {}
                if lv.samples == 3:
                    kwargs["outcolorspace"] = "RGB"
                    if (
                        lv.photometric == "RGB"
                        and not has_jfif_marker(data)
                        and not has_adobe_marker(data)
                    ):
                        kwargs["colorspace"] = "RGB"
                arr = imagecodecs.jpeg8_decode(data, **kwargs)
            elif lv.syntax in _J2K_SYNTAXES:
                arr = imagecodecs.jpeg2k_decode(data, numthreads=1)
                if lv.photometric in _YBR and lv.samples == 3:
                    arr = ycbcr_to_rgb(arr)
            elif lv.syntax in _RAW_SYNTAXES and lv.planar == 0:
                arr = np.frombuffer(data, np.uint8)[: lv.tw * lv.th * lv.samples]
                arr = arr.reshape(lv.th, lv.tw, lv.samples)
                if lv.photometric in _YBR and lv.samples == 3:
                    arr = ycbcr_to_rgb(arr)
            else:
                arr = np.asarray(self._wsi.read_tile(lv.scale, (tx, ty), as_array=True))
        except SlideReadError:
            raise
        except self._errors as exc:
            raise SlideReadError(
                str(self.path),
                f"frame ({tx}, {ty}) of level {lv.scale} unreadable "
                f"({type(exc).__name__}: {exc})",
            ) from exc
        if arr.shape[0] < th or arr.shape[1] < tw:
            raise SlideReadError(
                str(self.path), f"frame ({tx}, {ty}) of level {lv.scale} too small"
            )
        tile = to_rgb(arr[:th, :tw])
        if out is not None:
            out[...] = tile
            return out
        return tile

    def _fallback_region(
        self, level: int, x: int, y: int, w: int, h: int
    ) -> NDArray[np.uint8]:
        lv = self._levels[level]
        arr = self._wsi.read_region((x, y), lv.scale, (w, h), as_array=True)
        return to_rgb(np.asarray(arr))

    def info(self) -> SlideInfo:
        """Describe the slide."""
        levels = [
            LevelInfo(
                width=lv.width,
                height=lv.height,
                downsample=round(ds, 4),
                tile_width=lv.tw,
                tile_height=lv.th,
                mpp=round(lv.mpp, 5) if lv.mpp else None,
            )
            for lv, ds in zip(self._levels, self.level_downsamples, strict=True)
        ]
        return SlideInfo(
            path=str(self.path),
            format=self.format,
            vendor="dicom",
            level_count=self.level_count,
            levels=levels,
            mpp=self.mpp,
            tile_size=(self._levels[0].tw, self._levels[0].th),
        )

    def close(self) -> None:
        """Release file handles."""
        self._cache.clear()
        self._wsi.close()


__all__ = ["DicomSlideSource", "has_adobe_marker", "has_jfif_marker"]
