"""Synthetic slides that QC judges: one blurred all over, one blurred in part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from numpy.typing import NDArray
from scipy import ndimage

from slidefed.client.config import TilingSection
from slidefed.client.prepare.tiling import plan_tiles
from slidefed.client.slides.sniff import open_slide


def _blur(rgb: NDArray[np.uint8], sigma: float) -> NDArray[np.uint8]:
    out = ndimage.gaussian_filter(rgb.astype(np.float32), (sigma, sigma, 0))
    return np.asarray(np.clip(np.round(out), 0, 255), dtype=np.uint8)


def _write_like(path: Path, rgb: NDArray[np.uint8], source: Path) -> None:
    """Write ``rgb`` as a tiled TIFF with the resolution of ``source``."""
    with tifffile.TiffFile(source) as tif:
        num, den = tif.series[0].levels[0].keyframe.tags["XResolution"].value
    tifffile.imwrite(
        path,
        rgb,
        photometric="rgb",
        tile=(256, 256),
        compression="jpeg",
        compressionargs={"level": 92},
        resolution=(num / den, num / den),
        resolutionunit="CENTIMETER",
        metadata=None,
    )


def write_qc_slides(source: Path, folder: Path) -> tuple[Path, Path]:
    """Two copies of the synthetic slide ``source`` in ``folder``.

    ``blurred.tif`` is blurred by a Gaussian of 2.5 px all over: every tile is
    out of focus and the slide fails QC. ``partly.tif`` has the first and the
    last tile of its grid blurred: QC drops those tiles and passes the slide with a warning.
    """
    rgb = np.array(tifffile.imread(source))
    blurred = folder / "blurred.tif"
    _write_like(blurred, _blur(rgb, 2.5), source)
    with open_slide(source) as slide:
        grid = plan_tiles(slide, TilingSection())
    side = round(grid.read_size * grid.level_downsample)
    for x, y in (grid.coords[0], grid.coords[-1]):
        part = np.s_[y : y + side, x : x + side]
        rgb[part] = _blur(rgb[part], 2.5)
    partly = folder / "partly.tif"
    _write_like(partly, rgb, source)
    return blurred, partly
