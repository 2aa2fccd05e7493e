"""Slide-level QC on the thumbnail: tissue, pen ink, folds, exposure, modality.

Pen ink is a strong green, blue or red colour, or near black, over a stroke wider
than a few cells: the colour rules alone catch dark nuclei and haematoxylin, so
each rule's pixels are opened with a disc of half the stroke width
(``qc.ink_width_um``), which nuclei never survive. The ink is painted with the
glass's colour before the tissue mask is computed (so that its colour does not
spread into the mask through the smoothing), then removed from the mask. Folds
are tissue that stays dark and saturated when smoothed over
``qc.fold_smooth_um`` (two layers of tissue on top of each other); they are left
out too. Fluorescence slides have neither ink nor folds that these rules see.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slidefed.client.config import QcSection
from slidefed.client.prepare.tissue import (
    channel_max,
    channel_mean,
    channel_min,
    glass_colour,
    is_dark_background,
    mask_level,
    thumbnail,
    tissue_mask_from_rgb,
)
from slidefed.client.slides.base import SlideSource

Modality = Literal["brightfield", "fluorescence"]

#: Brightfield glass darker than this (mean, 0-1) means an under-exposed scan.
MIN_GLASS_BRIGHTNESS = 0.6
# Microns per thumbnail pixel assumed when the slide does not say.
_DEFAULT_MPP = 2.0
# Ink is grown by this many pixels: the blended edge of a stroke.
_INK_GROW_PX = 1
#: Ink and folds are looked for on the thumbnail reduced to about this many
#: microns per pixel (cheap; strokes and folds are far wider).
QC_MPP = 2.0

# Hue ranges (degrees) and minimum saturation of pen inks; black is handled
# apart (dark and grey, whatever its hue).
_INK_HUES: dict[str, tuple[tuple[float, float], float]] = {
    "green": ((70.0, 175.0), 0.25),
    "blue": ((185.0, 250.0), 0.45),
    "red": ((-10.0, 20.0), 0.6),
}
_BLACK_MAX_VALUE = 0.4
_BLACK_MAX_SATURATION = 0.4


@dataclass(frozen=True)
class SlideMasks:
    """What the thumbnail shows.

    Attributes
    ----------
    rgb : numpy.ndarray
        The (h, w, 3) uint8 thumbnail.
    downsample : float
        Its downsample relative to level 0.
    mpp : float or None
        Its microns per pixel, when the slide says.
    modality : str
        ``brightfield`` or ``fluorescence``.
    tissue : numpy.ndarray
        (h, w) bool: tissue, pen ink left out (folds still in).
    ink : numpy.ndarray
        (h, w) bool: pen ink.
    folds : numpy.ndarray
        (h, w) bool: tissue folds.
    glass_brightness : float
        Mean brightness (0-1) of the glass (brightfield), else 0.
    """

    rgb: NDArray[np.uint8]
    downsample: float
    mpp: float | None
    modality: Modality
    tissue: NDArray[np.bool_]
    ink: NDArray[np.bool_]
    folds: NDArray[np.bool_]
    glass_brightness: float

    @property
    def mask(self) -> NDArray[np.bool_]:
        """The tissue tiles are laid over: tissue without ink and folds."""
        return np.asarray(self.tissue & ~self.folds, dtype=bool)


def hsv(img: NDArray[np.float32]) -> tuple[NDArray[np.float32], ...]:
    """Hue (degrees, 0-360), saturation and value of an RGB image in 0-1."""
    cmax = channel_max(img)
    cmin = channel_min(img)
    delta = np.maximum(cmax - cmin, 1e-6)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    hue = np.where(
        cmax == r,
        ((g - b) / delta) % 6.0,
        np.where(cmax == g, (b - r) / delta + 2.0, (r - g) / delta + 4.0),
    )
    sat = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-6), 0.0)
    return (
        np.asarray(hue * 60.0, dtype=np.float32),
        np.asarray(sat, dtype=np.float32),
        np.asarray(cmax, dtype=np.float32),
    )


def _in_hue(hue: NDArray[np.float32], lo: float, hi: float) -> NDArray[np.bool_]:
    if lo < 0:
        return np.asarray((hue >= 360.0 + lo) | (hue <= hi), dtype=bool)
    return np.asarray((hue >= lo) & (hue <= hi), dtype=bool)


def detect_ink(
    rgb: NDArray[np.uint8], *, mpp: float | None, qc: QcSection
) -> NDArray[np.bool_]:
    """Pen ink on a brightfield thumbnail.

    Parameters
    ----------
    rgb : numpy.ndarray
        (h, w, 3) uint8 thumbnail.
    mpp : float, optional
        Its microns per pixel.
    qc : QcSection
        ``ink_width_um``: the narrowest stroke found.

    Returns
    -------
    numpy.ndarray
        (h, w) bool, True on ink.
    """
    img = rgb.astype(np.float32) / 255.0
    hue, sat, value = hsv(img)
    radius = max(1, math.ceil(qc.ink_width_um / 2.0 / (mpp or _DEFAULT_MPP) - 0.25))
    disc = ndimage.generate_binary_structure(2, 1)
    found = np.zeros(rgb.shape[:2], dtype=bool)
    rules = [
        _in_hue(hue, lo, hi) & (sat >= min_sat)
        for (lo, hi), min_sat in _INK_HUES.values()
    ]
    rules.append((value < _BLACK_MAX_VALUE) & (sat < _BLACK_MAX_SATURATION))
    for rule in rules:
        if rule.sum() > radius * radius:
            found |= ndimage.binary_opening(rule, structure=disc, iterations=radius)
    if found.any():
        found = ndimage.binary_dilation(found, iterations=_INK_GROW_PX)
    return np.asarray(found, dtype=bool)


def detect_folds(
    img: NDArray[np.float32],
    tissue: NDArray[np.bool_],
    *,
    mpp: float | None,
    qc: QcSection,
) -> NDArray[np.bool_]:
    """Tissue folds: tissue that stays dark and saturated once smoothed.

    ``img`` is the thumbnail as float (0-1), possibly reduced (``mpp`` is its
    own); the folds come back at the size of ``tissue``.
    """
    sigma = qc.fold_smooth_um / (mpp or _DEFAULT_MPP)
    # Smooth on a copy reduced to about sigma / 2 per pixel: the same result,
    # at a fraction of the cost.
    k = max(1, int(sigma // 2))
    img = _reduce(img, k)
    _, sat, _ = hsv(img)
    brightness = ndimage.gaussian_filter(channel_mean(img), sigma / k)
    saturation = ndimage.gaussian_filter(sat, sigma / k)
    folds = (brightness < qc.fold_brightness) & (saturation > qc.fold_saturation)
    return np.asarray(_expand(folds, tissue.shape) & tissue, dtype=bool)


def _reduce(
    img: NDArray[np.generic], k: int, scale: float = 1.0
) -> NDArray[np.float32]:
    """Mean over k x k blocks times ``scale``, as float32 (edges left over dropped)."""
    h, w = (img.shape[0] // k) * k, (img.shape[1] // k) * k
    if k <= 1 or h == 0 or w == 0:
        return np.asarray(img, dtype=np.float32) * np.float32(scale)
    rest = img.shape[2:]
    rows = img[:h, :w].reshape(h // k, k, w, *rest).sum(axis=1, dtype=np.float32)
    blocks: NDArray[np.float32] = rows.reshape(h // k, w // k, k, *rest).sum(axis=2)
    blocks *= np.float32(scale / (k * k))
    return blocks


def _expand(mask: NDArray[np.bool_], shape: tuple[int, ...]) -> NDArray[np.bool_]:
    """A reduced mask back at ``shape`` (nearest pixel)."""
    if mask.shape == shape[:2]:
        return mask
    rows = np.minimum(
        np.arange(shape[0]) * mask.shape[0] // shape[0], mask.shape[0] - 1
    )
    cols = np.minimum(
        np.arange(shape[1]) * mask.shape[1] // shape[1], mask.shape[1] - 1
    )
    return np.asarray(mask[np.ix_(rows, cols)], dtype=bool)


def assess_thumbnail(
    rgb: NDArray[np.uint8],
    *,
    mpp: float | None,
    qc: QcSection,
    downsample: float = 1.0,
) -> SlideMasks:
    """Tissue, ink and folds of a thumbnail.

    Parameters
    ----------
    rgb : numpy.ndarray
        (h, w, 3) uint8 thumbnail.
    mpp : float, optional
        Its microns per pixel.
    qc : QcSection
        The site's thresholds.
    downsample : float
        Its downsample relative to level 0 (recorded only).

    Returns
    -------
    SlideMasks
        The masks.
    """
    empty = np.zeros(rgb.shape[:2], dtype=bool)
    if is_dark_background(rgb):
        tissue = tissue_mask_from_rgb(rgb, mpp=mpp)
        return SlideMasks(
            rgb, downsample, mpp, "fluorescence", tissue, empty, empty, 0.0
        )
    # Ink and folds are far wider than a cell: look for them on a reduced copy.
    k = max(1, int(QC_MPP // (mpp or _DEFAULT_MPP)))
    small = _reduce(rgb, k, 1.0 / 255.0)
    small_mpp = (mpp or _DEFAULT_MPP) * k
    glass = glass_colour(small)
    ink = empty
    if qc.ink:
        small_u8 = np.round(small * 255.0).astype(np.uint8)
        ink = _expand(detect_ink(small_u8, mpp=small_mpp, qc=qc), rgb.shape)
    clean = rgb
    if ink.any():
        clean = rgb.copy()
        clean[ink] = np.round(glass * 255.0).astype(np.uint8)
    tissue = tissue_mask_from_rgb(clean, mpp=mpp) & ~ink
    folds = empty
    if qc.folds:
        folds = detect_folds(small, tissue, mpp=small_mpp, qc=qc)
    return SlideMasks(
        rgb,
        downsample,
        mpp,
        "brightfield",
        np.asarray(tissue, dtype=bool),
        ink,
        folds,
        float(glass.mean()),
    )


def assess_slide(slide: SlideSource, qc: QcSection) -> SlideMasks:
    """:func:`assess_thumbnail` of a slide's mask-level thumbnail."""
    rgb, ds = thumbnail(slide, mask_level(slide))
    mpp = slide.mpp * ds if slide.mpp else None
    return assess_thumbnail(rgb, mpp=mpp, qc=qc, downsample=ds)


__all__ = [
    "MIN_GLASS_BRIGHTNESS",
    "QC_MPP",
    "Modality",
    "SlideMasks",
    "assess_slide",
    "assess_thumbnail",
    "detect_folds",
    "detect_ink",
    "hsv",
]
