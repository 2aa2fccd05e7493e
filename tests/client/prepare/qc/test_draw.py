"""The QC thumbnail of a big slide, where a tile is under a pixel of it."""

from __future__ import annotations

import numpy as np

from slidefed.client.prepare.qc.draw import COLOURS, draw_overlay
from slidefed.client.prepare.qc.masks import SlideMasks
from slidefed.client.prepare.qc.record import SlideQc


def test_dropped_tiles_smaller_than_a_thumbnail_pixel_are_still_drawn() -> None:
    empty = np.zeros((100, 100), dtype=bool)
    rgb = np.full((100, 100, 3), 240, dtype=np.uint8)
    masks = SlideMasks(rgb, 1000.0, 0.5, "brightfield", empty, empty, empty, 0.9)
    record = SlideQc(
        slide="big.tif",
        row=1,
        key="k",
        modality="brightfield",
        verdict="warn",
        tissue_fraction=0.0,
        ink_fraction=0.0,
        fold_fraction=0.0,
        tiles_seen=1,
        tiles_kept=0,
        tile_side0=224.0,
        downsample=1000.0,
        dropped=[(50_000, 40_000, "blur")],
    )
    image = np.asarray(draw_overlay(masks, record))
    assert image.shape == (100, 100, 3)
    assert tuple(image[40, 50]) == COLOURS["blur"]
