"""What every slide reader shares: the :class:`SlideSource` protocol and its records.

Files are validated when opened, so that a truncated or foreign file fails early
with a :class:`~slidefed.common.errors.SlideReadError` naming the file and the
reason, never later with a bare ``IndexError`` deep inside a reader.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

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

    The reason reaches the user once, in the
    :class:`~slidefed.common.errors.SlideReadError`.
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


__all__ = ["READ_ERRORS", "LevelInfo", "SlideInfo", "SlideSource", "quiet_loggers"]
