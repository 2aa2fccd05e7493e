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
THUMB_SIDE = 768

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


def draw_overlay(masks: SlideMasks, record: SlideQc) -> Image.Image:
    """The thumbnail with the mask and the artefacts drawn, as an RGB image."""
    img = masks.rgb.astype(np.float32)
    _tint(img, masks.ink, COLOURS["ink"])
    _tint(img, masks.folds, COLOURS["fold"])
    mask = masks.mask
    edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
    img[edge] = COLOURS["tissue"]
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    side = record.tile_side0 / masks.downsample
    for x, y, flaw in record.dropped:
        x0, y0 = x / masks.downsample, y / masks.downsample
        draw.rectangle(
            (x0, y0, x0 + side - 1, y0 + side - 1), outline=COLOURS[flaw], width=2
        )
    scale = THUMB_SIDE / max(out.size)
    if scale < 1.0:
        size = (max(1, round(out.width * scale)), max(1, round(out.height * scale)))
        out = out.resize(size, Image.Resampling.BILINEAR)
    return out


def write_thumbnail(masks: SlideMasks, record: SlideQc, path: Path) -> None:
    """Write the drawn thumbnail as a PNG at ``path`` (atomically)."""
    buf = io.BytesIO()
    draw_overlay(masks, record).save(buf, format="PNG", optimize=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())


__all__ = ["COLOURS", "THUMB_SIDE", "draw_overlay", "write_thumbnail"]
