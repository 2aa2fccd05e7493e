"""Tissue detection on a low-resolution pyramid level.

Brightfield slides (H&E, IHC) show tissue as coloured or dark on bright glass:
the score is the largest of saturation, darkness relative to the glass (the
brightest pixels) and colour distance from the glass's own colour (pale IHC
counterstain on grey glass), smoothed over a few cells and thresholded with
Otsu's method inside fixed bounds. Fluorescence slides (DAPI, TRITC, ...) show
tissue as signal on a dark background: when the image is mostly dark, the score
is the brightest channel smoothed over a few cells (so that nuclei-sparse stroma
between DAPI nuclei counts), thresholded a few grey levels above the darkest
background. Both masks are then cleaned with morphology.

The mask is computed on a thumbnail of at most :data:`MASK_MAX_SIDE` pixels.
Where the slide has no level that small, the thumbnail is built by reading the
chosen level in bands and averaging blocks, so memory stays bounded whatever
the slide size. Pen ink, folds and the other artefacts are left out by the QC
stage (:mod:`slidefed.client.prepare.qc`).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slidefed.client.slides.base import SlideSource
from slidefed.client.slides.pixels import box_reduce

_T = TypeVar("_T", bound=np.generic)

# Pixels sampled to find the glass's colour.
GLASS_SAMPLE = 65536

# The mask is computed on the coarsest level whose long side is at least this.
MASK_MIN_SIDE = 512
# ... and on a thumbnail of that level whose long side is at most this.
MASK_MAX_SIDE = 2048
# Bytes of level pixels read at once while building a thumbnail.
BAND_BYTES = 64 * 1024 * 1024
# A thumbnail whose median brightest channel is below this has a dark
# background: a fluorescence slide.
DARK_MEDIAN = 64
# Smoothing of fluorescence signal before thresholding, in microns: over a few
# cells, so that stroma with sparse nuclei is tissue too.
FLUORESCENCE_SMOOTH_UM = 10.0
# Fluorescence tissue: this many grey levels above the darkest background at
# least, or this share of the way from it to the median signal.
FLUORESCENCE_MIN_LEVELS = 3.0
FLUORESCENCE_MEDIAN_SHARE = 0.25
# Smoothing of the brightfield score before thresholding, in microns.
BRIGHTFIELD_SMOOTH_UM = 8.0


def channel_max(img: NDArray[_T]) -> NDArray[_T]:
    """The largest of the three channels of an (h, w, 3) image.

    Explicit channel arithmetic: numpy's reductions over a last axis of three
    are several times slower.
    """
    out: NDArray[_T] = np.maximum(np.maximum(img[..., 0], img[..., 1]), img[..., 2])
    return out


def channel_min(img: NDArray[_T]) -> NDArray[_T]:
    """The smallest of the three channels of an (h, w, 3) image."""
    out: NDArray[_T] = np.minimum(np.minimum(img[..., 0], img[..., 1]), img[..., 2])
    return out


def channel_mean(img: NDArray[np.floating]) -> NDArray[np.float32]:
    """The mean of the three channels of an (h, w, 3) image, as float32."""
    out = img[..., 0].astype(np.float32)
    out += img[..., 1]
    out += img[..., 2]
    out /= 3.0
    return out


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
    return float(np.median(channel_max(rgb))) < DARK_MEDIAN


def glass_colour(img: NDArray[np.floating]) -> NDArray[np.float32]:
    """The glass's colour: the median of the brightest tenth of the pixels (0-1).

    Taken on an evenly strided sample of about :data:`GLASS_SAMPLE` pixels.
    """
    step = max(1, int(math.sqrt(img.shape[0] * img.shape[1] / GLASS_SAMPLE)))
    sample = img[::step, ::step]
    brightness = channel_mean(sample)
    bright = brightness >= np.percentile(brightness, 90)
    return np.asarray(np.median(sample[bright], axis=0), dtype=np.float32)


def brightfield_score(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Per-pixel tissue score of a brightfield image (0-1, unsmoothed)."""
    img = rgb.astype(np.float32) / 255.0
    cmax = channel_max(img)
    cmin = channel_min(img)
    sat = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-6), 0.0)
    # Darkness relative to the glass (the brightest pixels), so that a blank
    # slide scanned a little grey stays blank.
    brightness = channel_mean(img)
    glass = max(float(np.percentile(brightness, 99)), 0.5)
    darkness = np.clip(1.0 - brightness / glass, 0.0, 1.0)
    # Pale tissue (IHC counterstain) is a tint of the glass's own colour.
    diff = img - glass_colour(img)
    diff *= diff
    distance = np.sqrt(diff[..., 0] + diff[..., 1] + diff[..., 2])
    return np.asarray(np.maximum(np.maximum(sat, darkness), distance), np.float32)


def _brightfield_mask(rgb: NDArray[np.uint8], smooth_px: float) -> NDArray[np.bool_]:
    score = brightfield_score(rgb)
    if smooth_px >= 0.5:
        # Pale tissue (IHC counterstain, cytoplasm) is told from glass by the
        # nuclei in it: average the score over a few cells.
        score = ndimage.gaussian_filter(score, smooth_px)
    # Otsu alone splits dark tumour from pale stroma when both are present, so
    # clamp it: a floor keeps blank glass blank, a ceiling keeps pale tissue in.
    threshold = min(max(otsu_threshold(score.ravel()), 0.04), 0.05)
    mask = score > threshold
    mask = ndimage.binary_opening(mask, iterations=2)
    mask = ndimage.binary_closing(mask, iterations=2)
    return np.asarray(mask, dtype=bool)


def _fluorescence_mask(rgb: NDArray[np.uint8], smooth_px: float) -> NDArray[np.bool_]:
    signal = channel_max(rgb).astype(np.float32)
    smooth = ndimage.gaussian_filter(signal, max(smooth_px, 1.0))
    # The darkest background, and a threshold a few grey levels above it: a
    # blank dark slide stays blank, and the dim autofluorescence of stroma
    # between sparse nuclei counts as tissue (Otsu would split it from nuclei).
    background = float(np.percentile(smooth, 2))
    median = float(np.median(smooth))
    threshold = background + max(
        FLUORESCENCE_MIN_LEVELS, FLUORESCENCE_MEDIAN_SHARE * (median - background)
    )
    mask = smooth > threshold
    mask = ndimage.binary_opening(mask, iterations=2)
    mask = ndimage.binary_closing(mask, iterations=3)
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
        return _fluorescence_mask(rgb, min(smooth_px, 16.0))
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
    "brightfield_score",
    "channel_max",
    "channel_mean",
    "channel_min",
    "glass_colour",
    "is_dark_background",
    "mask_level",
    "otsu_threshold",
    "thumbnail",
    "tissue_mask",
    "tissue_mask_from_rgb",
]
