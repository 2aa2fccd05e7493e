"""Tissue detection on a low-resolution pyramid level.

Brightfield slides (H&E, IHC) show tissue as coloured or dark on bright glass:
the score is the larger of saturation and darkness relative to the glass (the
brightest pixels), thresholded with Otsu's method inside fixed bounds. Fluorescence slides (DAPI, TRITC, ...) show tissue
as signal on a dark background: when the image is mostly dark, the score is
the smoothed brightest channel, thresholded with Otsu's method on a log scale
above the background level. Both masks are then cleaned with morphology.

The mask is computed on a thumbnail of at most :data:`MASK_MAX_SIDE` pixels.
Where the slide has no level that small, the thumbnail is built by reading the
chosen level in bands and averaging blocks, so memory stays bounded whatever
the slide size.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slidefed.client.slides.base import SlideSource
from slidefed.client.slides.pixels import box_reduce

# The mask is computed on the coarsest level whose long side is at least this.
MASK_MIN_SIDE = 512
# ... and on a thumbnail of that level whose long side is at most this.
MASK_MAX_SIDE = 2048
# Bytes of level pixels read at once while building a thumbnail.
BAND_BYTES = 64 * 1024 * 1024
# A thumbnail whose median brightest channel is below this has a dark
# background: a fluorescence slide.
DARK_MEDIAN = 64
# Smoothing of fluorescence signal before thresholding, in microns.
FLUORESCENCE_SMOOTH_UM = 6.0
# Smoothing of the brightfield score before thresholding, in microns.
BRIGHTFIELD_SMOOTH_UM = 8.0


def otsu_threshold(values: NDArray[np.floating], bins: int = 128) -> float:
    """Otsu's threshold of a 1-D sample."""
    if values.size == 0:
        return 0.0
    hist, edges = np.histogram(values, bins=bins)
    hist = hist.astype(np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centers[int(np.argmax(between))])


def is_dark_background(rgb: NDArray[np.uint8]) -> bool:
    """Whether an image is mostly dark (a fluorescence slide)."""
    if rgb.size == 0:
        return False
    return float(np.median(rgb.max(axis=2))) < DARK_MEDIAN


def _brightfield_mask(rgb: NDArray[np.uint8], smooth_px: float) -> NDArray[np.bool_]:
    img = rgb.astype(np.float32) / 255.0
    cmax = img.max(axis=2)
    cmin = img.min(axis=2)
    sat = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-6), 0.0)
    # Darkness relative to the glass (the brightest pixels), so that a blank
    # slide scanned a little grey stays blank.
    brightness = img.mean(axis=2)
    glass = max(float(np.percentile(brightness, 99)), 0.5)
    darkness = np.clip(1.0 - brightness / glass, 0.0, 1.0)
    score = np.maximum(sat, darkness)
    if smooth_px >= 0.5:
        # Pale tissue (IHC counterstain, cytoplasm) is told from glass by the
        # nuclei in it: average the score over a few cells.
        score = ndimage.gaussian_filter(score, smooth_px)
    # Otsu alone splits dark tumour from pale stroma when both are present, so
    # clamp it: a floor keeps blank glass blank, a ceiling keeps pale tissue in.
    threshold = min(max(otsu_threshold(score.ravel()), 0.04), 0.08)
    mask = score > threshold
    mask = ndimage.binary_opening(mask, iterations=2)
    mask = ndimage.binary_closing(mask, iterations=2)
    return np.asarray(mask, dtype=bool)


def _fluorescence_mask(rgb: NDArray[np.uint8], smooth_px: float) -> NDArray[np.bool_]:
    signal = rgb.max(axis=2).astype(np.float32)
    background = float(np.percentile(signal, 5))
    smooth = ndimage.gaussian_filter(signal, max(smooth_px, 1.0))
    score = np.log1p(smooth)
    # Above the background by a few grey levels at least: a blank dark slide
    # stays blank instead of Otsu splitting its noise.
    floor = math.log1p(background + 4.0)
    threshold = max(otsu_threshold(score.ravel()), floor)
    mask = score > threshold
    mask = ndimage.binary_closing(mask, iterations=3)
    mask = ndimage.binary_opening(mask, iterations=2)
    return np.asarray(ndimage.binary_fill_holes(mask), dtype=bool)


def tissue_mask_from_rgb(
    rgb: NDArray[np.uint8], *, mpp: float | None = None
) -> NDArray[np.bool_]:
    """Tissue mask of an RGB thumbnail, brightfield or fluorescence.

    Parameters
    ----------
    rgb : numpy.ndarray
        (h, w, 3) uint8 thumbnail.
    mpp : float, optional
        Microns per pixel of the thumbnail; sets how much the score is smoothed
        before thresholding (by a few cells: 1 or 2 px when unknown).

    Returns
    -------
    numpy.ndarray
        (h, w) bool, True on tissue.
    """
    if is_dark_background(rgb):
        smooth_px = FLUORESCENCE_SMOOTH_UM / mpp if mpp else 2.0
        return _fluorescence_mask(rgb, min(smooth_px, 8.0))
    smooth_px = BRIGHTFIELD_SMOOTH_UM / mpp if mpp else 1.0
    return _brightfield_mask(rgb, min(smooth_px, 16.0))


def mask_level(slide: SlideSource) -> int:
    """The coarsest level whose long side is at least :data:`MASK_MIN_SIDE`."""
    best = 0
    for i, (w, h) in enumerate(slide.level_dimensions):
        if max(w, h) >= MASK_MIN_SIDE:
            best = i
    return best


def thumbnail(
    slide: SlideSource, level: int, max_side: int = MASK_MAX_SIDE
) -> tuple[NDArray[np.uint8], float]:
    """A thumbnail of ``level`` with long side at most ``max_side``.

    The level is read in bands of about :data:`BAND_BYTES` and averaged over
    k x k blocks, so memory does not grow with the level's size.

    Returns
    -------
    tuple
        The (h, w, 3) uint8 thumbnail and its downsample relative to level 0.
    """
    width, height = slide.level_dimensions[level]
    level_ds = slide.level_downsamples[level]
    k = max(1, math.ceil(max(width, height) / max_side))
    if k == 1:
        return slide.read_level_region(level, (0, 0), (width, height)), level_ds
    out_w, out_h = max(width // k, 1), max(height // k, 1)
    rows_per_band = max(1, BAND_BYTES // (width * 3 * k)) * k
    thumb = np.empty((out_h, out_w, 3), dtype=np.uint8)
    for y in range(0, out_h * k, rows_per_band):
        rows = min(rows_per_band, out_h * k - y)
        band = slide.read_level_region(level, (0, y), (out_w * k, rows))
        thumb[y // k : (y + rows) // k] = box_reduce(band, k, rounding="floor")
    return thumb, level_ds * k


def tissue_mask(slide: SlideSource) -> tuple[NDArray[np.bool_], float]:
    """Tissue mask of a slide and its downsample relative to level 0."""
    rgb, ds = thumbnail(slide, mask_level(slide))
    mpp = slide.mpp * ds if slide.mpp else None
    return tissue_mask_from_rgb(rgb, mpp=mpp), ds


__all__ = [
    "is_dark_background",
    "mask_level",
    "otsu_threshold",
    "thumbnail",
    "tissue_mask",
    "tissue_mask_from_rgb",
]
