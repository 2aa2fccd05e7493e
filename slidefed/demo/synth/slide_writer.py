"""Write one synthetic slide: a pyramidal, tiled, JPEG-compressed TIFF with mpp.

The levels are top-level pages (reduced levels have ``subfiletype=1``, no SubIFDs)
with the resolution in pixels per centimetre, so tiffslide and openslide both read
every level and ``mpp``.  No timestamp and no software tag are stored, so the file
is a deterministic function of the arguments.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tifffile

from slidefed.common.errors import ConfigError
from slidefed.demo.synth._fields import U8
from slidefed.demo.synth._render import DEFAULT_LOOK, Look, render

MIN_SIDE = 256  # smallest accepted width / height; also the pyramid stop rule


def check_slide_args(
    seed: int, width: int, height: int, mpp: float, tile: int, quality: int
) -> None:
    """Raise :class:`ConfigError` for arguments that cannot make a slide."""
    if seed < 0:
        raise ConfigError(f"seed must be >= 0 (got {seed}); pass a non-negative seed")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ConfigError(
            f"width/height must be >= {MIN_SIDE} px (got {width}x{height}); "
            "pass a larger size"
        )
    if not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"mpp must be a positive number (got {mpp}); e.g. mpp=0.5")
    if tile < 16 or tile % 16:
        raise ConfigError(
            f"tile must be a positive multiple of 16 (got {tile}); e.g. tile=256"
        )
    if not 1 <= quality <= 100:
        raise ConfigError(f"quality must be in 1..100 (got {quality}); e.g. 85")


def write_synthetic_slide(
    path: Path,
    *,
    seed: int,
    tumour: bool,
    width: int = 2560,
    height: int = 2048,
    mpp: float = 0.5,
    tile: int = 256,
    quality: int = 85,
    look: Look = DEFAULT_LOOK,
) -> None:
    """Write a synthetic H&E-like whole-slide image.

    Pyramidal, tiled, JPEG-compressed TIFF (levels 1, 1/2, 1/4, 1/8 ... while
    the short side >= 256 px -> at least 4 levels at the default size) with mpp
    metadata, in the layout described in this module's docstring.

    Parameters
    ----------
    path : Path
        Output file; its parent directory must exist.
    seed : int
        Non-negative seed; the file is a deterministic function of all arguments.
    tumour : bool
        Add tumour regions (25-50 % of the tissue) with dense, large, dark nuclei.
    width, height : int
        Level-0 size in pixels, each >= 256.
    mpp : float
        Level-0 microns per pixel.
    tile : int
        Tile size in pixels, a multiple of 16.
    quality : int
        JPEG quality, 1-100.
    look : Look
        The hospital's staining and tumour extent (default: 28-45 % tumour).

    Raises
    ------
    ConfigError
        If an argument is out of range.
    """
    check_slide_args(seed, width, height, mpp, tile, quality)
    level, _ = render(seed, tumour, width, height, look)
    _write_pyramid(path, level, mpp=mpp, tile=tile, quality=quality)


def _write_pyramid(
    path: Path, level: U8, *, mpp: float, tile: int, quality: int
) -> None:
    """Write ``level`` and its 2x reductions while the short side stays >= 256 px."""
    px_per_cm = 10_000.0 / mpp
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        k = 0
        while True:
            res = px_per_cm / 2**k
            tw.write(
                level,
                photometric="rgb",
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": quality},
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=0 if k == 0 else 1,
                metadata=None,
                software=False,
                datetime=None,
            )
            if min(level.shape[:2]) // 2 < MIN_SIDE:
                break
            level = _halve(level)
            k += 1


def _halve(img: U8) -> U8:
    """2x2 box downsampling of an RGB image (odd edge rows/cols dropped)."""
    h2, w2 = img.shape[0] // 2, img.shape[1] // 2
    rows = img[: 2 * h2, : 2 * w2].reshape(h2, 2, w2 * 6)
    pairs = np.add(rows[:, 0], rows[:, 1], dtype=np.uint16).reshape(h2, w2, 2, 3)
    total = np.add(pairs[:, :, 0], pairs[:, :, 1])
    total += 2
    total >>= 2
    return total.astype(np.uint8)
