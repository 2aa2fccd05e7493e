"""Slide-level QC on the real slides of shared/data, with artefacts drawn by the test.

Pen ink in four colours is drawn on CMU-1's thumbnail (the way it lands on a
glass slide: strokes ~25 um wide, 80 % opaque); the DAPI and TRITC scans of the
same field must give the same tissue; OS-2-vsi's pale IHC tissue must not have
holes larger than a tile.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from scipy import ndimage

from slidefed.client.config import QcSection, TilingSection
from slidefed.client.prepare.qc import SlideMasks, assess_slide, assess_thumbnail
from slidefed.client.prepare.qc.record import slide_record
from slidefed.client.prepare.qc.tiles import TileTally
from slidefed.client.prepare.tissue import tissue_mask_from_rgb
from slidefed.client.slides import open_slide

INKS = {
    "green": (40, 140, 70),
    "blue": (40, 60, 170),
    "black": (35, 35, 40),
    "red": (200, 40, 50),
}


@functools.cache
def _assessed(path: Path) -> SlideMasks:
    with open_slide(path) as slide:
        return assess_slide(slide, QcSection())


def _masks(shared_data: Path, rel: str) -> SlideMasks:
    """The slide's masks, assessed once per test session."""
    return _assessed(shared_data / "slides" / rel)


def _draw_ink(
    rgb: NDArray[np.uint8], mpp: float
) -> tuple[NDArray[np.uint8], dict[str, NDArray[np.bool_]]]:
    """Four pen strokes across the slide, one per colour; the image and each mask."""
    h, w = rgb.shape[:2]
    out = rgb.astype(np.float32)
    drawn: dict[str, NDArray[np.bool_]] = {}
    for i, (name, colour) in enumerate(INKS.items()):
        layer = Image.new("L", (w, h), 0)
        y0 = int(h * (0.15 + 0.2 * i))
        points = [
            (int(w * 0.1), y0),
            (int(w * 0.5), y0 + int(h * 0.05)),
            (int(w * 0.9), y0 - int(h * 0.03)),
        ]
        ImageDraw.Draw(layer).line(points, fill=255, width=round(25 / mpp))
        stroke = np.asarray(layer) > 0
        out[stroke] = 0.8 * np.asarray(colour, np.float32) + 0.2 * out[stroke]
        drawn[name] = stroke
    return out.astype(np.uint8), drawn


def test_pen_ink_in_four_colours_is_left_out_of_the_tissue(shared_data: Path) -> None:
    clean = _masks(shared_data, "aperio/CMU-1-Small-Region.svs")
    assert clean.mpp is not None
    assert clean.ink.sum() / clean.tissue.sum() < 0.001  # no ink to speak of
    inked, drawn = _draw_ink(clean.rgb, clean.mpp)
    # Without QC the ink counts as tissue (the problem this stage solves).
    plain = tissue_mask_from_rgb(inked, mpp=clean.mpp)
    ink_all = np.logical_or.reduce(list(drawn.values()))
    assert (plain & ink_all).sum() / ink_all.sum() > 0.5

    masks = assess_thumbnail(inked, mpp=clean.mpp, qc=QcSection())

    for name, stroke in drawn.items():
        excluded = (stroke & ~masks.mask).sum() / stroke.sum()
        assert excluded >= 0.95, (name, excluded)
    tissue = clean.mask & ~ink_all
    lost = (tissue & ~masks.mask).sum() / tissue.sum()
    assert lost <= 0.05, lost


def test_ink_detection_can_be_turned_off(shared_data: Path) -> None:
    clean = _masks(shared_data, "aperio/CMU-1-Small-Region.svs")
    assert clean.mpp is not None
    inked, _ = _draw_ink(clean.rgb, clean.mpp)
    masks = assess_thumbnail(inked, mpp=clean.mpp, qc=QcSection(ink=False))
    assert masks.ink.sum() == 0


def test_dapi_and_tritc_masks_of_the_same_field_agree(shared_data: Path) -> None:
    dapi = _masks(shared_data, "hamamatsu/test3-DAPI-2-(387).ndpi")
    tritc = _masks(shared_data, "hamamatsu/test3-TRITC-2-(560).ndpi")
    assert dapi.modality == tritc.modality == "fluorescence"
    assert dapi.mask.shape == tritc.mask.shape
    iou = (dapi.mask & tritc.mask).sum() / (dapi.mask | tritc.mask).sum()
    assert iou >= 0.9, iou
    # Both keep background out too.
    assert 0.5 < dapi.mask.mean() < 0.97


def _largest(mask: NDArray[np.bool_]) -> int:
    labels, n = ndimage.label(mask)
    return int(np.bincount(labels.ravel())[1:].max()) if n else 0


def test_pale_tissue_has_no_hole_larger_than_a_tile(shared_data: Path) -> None:
    masks = _masks(shared_data, "ome-tiff/OS-2-vsi.ome.tif")
    assert masks.modality == "brightfield"
    assert masks.mpp is not None
    tiling = TilingSection()
    tile_px = (tiling.tile_size * tiling.target_mpp / masks.mpp) ** 2
    mask = masks.mask
    # A hole: background enclosed by tissue.
    holes = ndimage.binary_fill_holes(mask) & ~mask
    assert _largest(holes) < tile_px
    # Background touching the border larger than a tile must be glass: flat
    # and of the glass's colour (pale tissue has texture: cell borders, nuclei).
    grey = masks.rgb.astype(np.float32).mean(axis=2)
    local_sd = np.sqrt(
        np.maximum(
            ndimage.uniform_filter(grey**2, 9) - ndimage.uniform_filter(grey, 9) ** 2,
            0,
        )
    )
    glass_sd = float(np.median(local_sd[~mask]))
    labels, n = ndimage.label(~mask)
    for i in range(1, n + 1):
        region = labels == i
        if region.sum() >= tile_px:
            textured = (local_sd[region] > 3 * glass_sd + 2).mean()
            assert textured < 0.1, (i, textured)
    assert mask.mean() > 0.8


@pytest.mark.parametrize(
    "rel",
    [
        "aperio/CMU-1-Small-Region.svs",
        "aperio/tcga-cr-7395-01a-01-ts1.svs",
        "ome-tiff/OS-2-vsi.ome.tif",
        "hamamatsu/test3-DAPI-2-(387).ndpi",
    ],
)
def test_clean_reference_slides_show_no_ink_nor_folds_to_speak_of(
    shared_data: Path, rel: str
) -> None:
    masks = _masks(shared_data, rel)
    tissue = max(int(masks.tissue.sum()), 1)
    assert masks.ink.sum() / tissue < QcSection().warn_ink_fraction
    assert masks.folds.sum() / tissue < QcSection().warn_fold_fraction


def test_a_fluorescence_slide_for_the_hed_encoder_gets_a_modality_warning(
    shared_data: Path,
) -> None:
    dapi = _masks(shared_data, "hamamatsu/test3-DAPI-2-(387).ndpi")
    tally = TileTally()
    tally.add([(0, 0), (224, 0)], [None, None])

    def record(qc: QcSection) -> tuple[str, list[str]]:
        r = slide_record(
            dapi, tally, slide="d", row=1, key="k", tile_side0=224, qc=qc, encoder="hed"
        )
        return r.verdict, r.reasons

    verdict, reasons = record(QcSection())
    assert verdict == "warn"
    assert reasons == [
        "fluorescence slide, but encoder 'hed' and the task expect brightfield "
        "slides; set features.encoder for fluorescence slides or qc.modality in "
        "site.toml"
    ]
    assert record(QcSection(modality="fluorescence")) == ("pass", [])
    assert record(QcSection(modality="any")) == ("pass", [])
