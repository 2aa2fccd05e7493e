"""Tile-level QC at the working resolution: focus and exposure.

Focus is measured as the contrast of the finest detail (the image minus its
Gaussian blur at 1 px) over the contrast of coarser detail (minus its blur at
4 px), on the central part of each tile (exposure too): a ratio that does not depend on the
stain's strength. On the shared reference slides, sharp tiles score 0.20 or more
and the same tiles blurred by a Gaussian of 2 px score at most 0.16. Exposure:
a brightfield tile that is dark overall is under-exposed; a tile whose pixels
are mostly clipped is over-exposed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slidefed.client.config import QcSection

TileFlaw = Literal["blur", "dark", "bright"]

#: Side of the central square of a tile that focus is measured on (pixels).
FOCUS_WINDOW = 112
FLAW_TEXT: dict[str, str] = {
    "blur": "out of focus",
    "dark": "under-exposed",
    "bright": "over-exposed",
}


def _crop(tiles: NDArray[np.uint8]) -> NDArray[np.uint8]:
    side = tiles.shape[1]
    lo = max(0, (side - FOCUS_WINDOW) // 2)
    hi = min(side, lo + FOCUS_WINDOW)
    return tiles[:, lo:hi, lo:hi]


def _grey(crop: NDArray[np.uint8], fluorescence: bool) -> NDArray[np.float32]:
    r, g, b = (crop[..., c] for c in range(3))
    if fluorescence:
        return np.maximum(np.maximum(r, g), b).astype(np.float32)
    grey = r.astype(np.float32)
    grey += g
    grey += b
    grey /= 3.0
    return grey


def sharpness(tiles: NDArray[np.uint8], *, fluorescence: bool) -> NDArray[np.float32]:
    """Focus of each tile of an (n, h, w, 3) batch (higher is sharper).

    Parameters
    ----------
    tiles : numpy.ndarray
        (n, h, w, 3) uint8 tiles.
    fluorescence : bool
        Measure on the brightest channel (signal) rather than the mean.

    Returns
    -------
    numpy.ndarray
        (n,) float32: fine-detail contrast over coarse-detail contrast.
    """
    grey = _grey(_crop(tiles), fluorescence)
    fine = grey - ndimage.gaussian_filter(grey, (0, 1.0, 1.0), truncate=3.0)
    coarse = grey - ndimage.gaussian_filter(grey, (0, 4.0, 4.0), truncate=2.5)
    return np.asarray(
        fine.std(axis=(1, 2)) / np.maximum(coarse.std(axis=(1, 2)), 1e-3),
        dtype=np.float32,
    )


def tile_flaws(
    tiles: NDArray[np.uint8], *, fluorescence: bool, qc: QcSection
) -> list[TileFlaw | None]:
    """Why each tile of a batch fails QC (None: it passes).

    Exposure is judged before focus: a black or white tile has no detail.
    """
    if len(tiles) == 0:
        return []
    # Exposure on the same central square as focus: a quarter of the pixels.
    crop = _crop(tiles)
    r, g, b = (crop[..., c] for c in range(3))
    if fluorescence:
        clipped = ((r == 255) | (g == 255) | (b == 255)).mean(axis=(1, 2))
    else:
        clipped = ((r == 255) & (g == 255) & (b == 255)).mean(axis=(1, 2))
    brightness = _grey(crop, False).mean(axis=(1, 2)) / 255.0
    sharp = sharpness(tiles, fluorescence=fluorescence)
    flaws: list[TileFlaw | None] = []
    for i in range(len(tiles)):
        if clipped[i] > qc.max_clipped_fraction:
            flaws.append("bright")
        elif not fluorescence and brightness[i] < qc.min_brightness:
            flaws.append("dark")
        elif sharp[i] < qc.min_sharpness:
            flaws.append("blur")
        else:
            flaws.append(None)
    return flaws


@dataclass
class TileTally:
    """The tiles one slide's QC has seen and the ones it dropped."""

    seen: int = 0
    flaws: Counter[str] = field(default_factory=Counter)
    dropped: list[tuple[int, int, str]] = field(default_factory=list)

    def add(
        self,
        coords: list[tuple[int, int]],
        flaws: list[TileFlaw | None],
    ) -> list[bool]:
        """Count a batch; returns which tiles to keep."""
        self.seen += len(coords)
        keep = []
        for xy, flaw in zip(coords, flaws, strict=True):
            keep.append(flaw is None)
            if flaw is not None:
                self.flaws[flaw] += 1
                self.dropped.append((xy[0], xy[1], flaw))
        return keep

    def merge(self, other: TileTally) -> None:
        """Add the tally of the tiles after these (a later region of the slide)."""
        self.seen += other.seen
        self.flaws.update(other.flaws)
        self.dropped.extend(other.dropped)


__all__ = [
    "FLAW_TEXT",
    "FOCUS_WINDOW",
    "TileFlaw",
    "TileTally",
    "sharpness",
    "tile_flaws",
]
