"""A slide's QC thumbnail: the mask's outline and the artefacts drawn over it.

Green outlines the tissue kept, magenta fills pen ink, orange fills folds, and
each dropped tile is a square: red out of focus, blue under- or over-exposed.
The PNG stays on site, in ``state/qc``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from scipy import ndimage

from slidefed.client.prepare.qc.masks import SlideMasks
from slidefed.client.prepare.qc.record import SlideQc
from slidefed.common.fileio import atomic_write_bytes

#: Long side of a drawn thumbnail, in pixels.
THUMB_SIDE = 640

COLOURS: dict[str, tuple[int, int, int]] = {
    "tissue": (0, 200, 80),
    "ink": (230, 0, 200),
    "fold": (255, 140, 0),
    "blur": (230, 30, 30),
    "dark": (40, 90, 255),
    "bright": (40, 90, 255),
}


def _tint(
    img: NDArray[np.float32], where: NDArray[np.bool_], colour: tuple[int, int, int]
) -> None:
    img[where] = 0.45 * img[where] + 0.55 * np.asarray(colour, dtype=np.float32)


def _small(
    masks: SlideMasks,
) -> tuple[NDArray[np.uint8], NDArray[np.bool_], NDArray[np.bool_], NDArray[np.bool_]]:
    """The thumbnail and its masks at most :data:`THUMB_SIDE` pixels long."""
    h, w = masks.rgb.shape[:2]
    step = max(1, -(-max(h, w) // THUMB_SIDE))
    pick = (slice(None, None, step), slice(None, None, step))
    return masks.rgb[pick], masks.mask[pick], masks.ink[pick], masks.folds[pick]


def draw_overlay(masks: SlideMasks, record: SlideQc) -> Image.Image:
    """The thumbnail with the mask and the artefacts drawn, as an RGB image."""
    rgb, mask, ink, folds = _small(masks)
    scale = rgb.shape[0] / masks.rgb.shape[0] / masks.downsample
    img = rgb.astype(np.float32)
    _tint(img, ink, COLOURS["ink"])
    _tint(img, folds, COLOURS["fold"])
    edge = mask & ~ndimage.binary_erosion(mask, iterations=1)
    img[edge] = COLOURS["tissue"]
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    # On a big slide a tile may be under a pixel of the thumbnail.
    side = max(record.tile_side0 * scale - 1.0, 1.0)
    width = 2 if side >= 6 else 1
    for x, y, flaw in record.dropped:
        x0, y0 = x * scale, y * scale
        draw.rectangle(
            (x0, y0, x0 + side, y0 + side), outline=COLOURS[flaw], width=width
        )
    return out


def write_thumbnail(masks: SlideMasks, record: SlideQc, path: Path) -> None:
    """Write the drawn thumbnail as a PNG at ``path`` (atomically)."""
    buf = io.BytesIO()
    draw_overlay(masks, record).save(buf, format="PNG", compress_level=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


__all__ = ["COLOURS", "THUMB_SIDE", "draw_overlay", "write_thumbnail"]
