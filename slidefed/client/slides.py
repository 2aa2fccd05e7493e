"""Slide readers behind one :class:`SlideSource` protocol.

tiffslide reads SVS, NDPI, OME-TIFF and generic tiled pyramidal TIFF. Files are
validated when opened so that a truncated or foreign file fails early with a
:class:`SlideReadError` naming the file and the reason, never later with a bare
``IndexError`` deep inside a reader.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from slidefed.common.errors import SlideReadError

logger = logging.getLogger(__name__)

# What readers raise on bad files (see reference/slides.md section 2).
_READ_ERRORS = (
    ValueError,
    IndexError,
    KeyError,
    RuntimeError,
    NotImplementedError,
    OSError,
)


class LevelInfo(BaseModel):
    """One pyramid level."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int
    height: int
    downsample: float
    tile_width: int | None = None
    tile_height: int | None = None


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
    """A readable whole-slide image."""

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

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> NDArray[np.uint8]:
        """Read ``size`` pixels of ``level`` at level-0 ``location`` as (h, w, 3)."""

    def info(self) -> SlideInfo:
        """Describe the slide."""

    def close(self) -> None:
        """Release file handles."""


class TiffSlideSource:
    """A TIFF-family slide read with tiffslide."""

    def __init__(self, path: Path) -> None:
        import tiffslide

        self.path = Path(path)
        if not self.path.is_file():
            raise SlideReadError(str(self.path), "file not found")
        try:
            self._slide = tiffslide.TiffSlide(str(self.path))
            dims = self._slide.level_dimensions
            props = self._slide.properties
        except _READ_ERRORS as exc:
            raise SlideReadError(
                str(self.path), f"not a readable slide ({type(exc).__name__}: {exc})"
            ) from exc
        if not dims:
            raise SlideReadError(str(self.path), "no image levels found")
        self._props: dict[str, Any] = dict(props)
        self._check_truncation()

    def _check_truncation(self) -> None:
        size = self.path.stat().st_size
        tf = self._slide.ts_tifffile
        idx = self._props.get("tiffslide.series-index") or 0
        try:
            levels = tf.series[idx].levels
            for level in levels:
                page = level.keyframe
                ends = [
                    o + c
                    for o, c in zip(page.dataoffsets, page.databytecounts, strict=False)
                ]
                if ends and max(ends) > size:
                    raise SlideReadError(
                        str(self.path),
                        f"file is truncated ({size} bytes, level data ends at "
                        f"{max(ends)}); copy the slide again from the scanner store",
                    )
        except (IndexError, AttributeError) as exc:
            raise SlideReadError(
                str(self.path), f"unreadable TIFF structure ({exc})"
            ) from exc

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return int(self._slide.level_count)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of each level."""
        return [(int(w), int(h)) for w, h in self._slide.level_dimensions]

    @property
    def level_downsamples(self) -> list[float]:
        """Downsample of each level relative to level 0."""
        return [float(d) for d in self._slide.level_downsamples]

    @property
    def mpp(self) -> float | None:
        """Microns per pixel at level 0, or None when the file does not say."""
        value = self._props.get("tiffslide.mpp-x")
        return float(value) if value else None

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> NDArray[np.uint8]:
        """Read ``size`` pixels of ``level`` at level-0 ``location`` as (h, w, 3)."""
        try:
            arr = self._slide.read_region(location, level, size, as_array=True)
        except _READ_ERRORS as exc:
            raise SlideReadError(
                str(self.path), f"tile at {location} level {level} unreadable ({exc})"
            ) from exc
        return np.asarray(arr[..., :3], dtype=np.uint8)

    def info(self) -> SlideInfo:
        """Describe the slide."""
        levels = []
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
                )
            )
        first = levels[0]
        tile = (
            (first.tile_width, first.tile_height)
            if first.tile_width and first.tile_height
            else None
        )
        suffix = self.path.suffix.lower()
        fmt = {".svs": "svs", ".ndpi": "ndpi"}.get(suffix, "tiff")
        if self.path.name.lower().endswith((".ome.tif", ".ome.tiff")):
            fmt = "ome-tiff"
        vendor = self._props.get("tiffslide.vendor") or "generic-tiff"
        return SlideInfo(
            path=str(self.path),
            format=fmt,
            vendor=str(vendor),
            level_count=self.level_count,
            levels=levels,
            mpp=self.mpp,
            tile_size=tile,
        )

    def close(self) -> None:
        """Release file handles."""
        self._slide.close()

    def __enter__(self) -> TiffSlideSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_slide(path: Path) -> TiffSlideSource:
    """Open a slide with the reader that fits its format.

    Raises
    ------
    SlideReadError
        If the file is missing, truncated, or not a slide.
    """
    return TiffSlideSource(Path(path))


__all__ = ["LevelInfo", "SlideInfo", "SlideSource", "TiffSlideSource", "open_slide"]
