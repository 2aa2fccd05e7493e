"""Tissue detection on a low-resolution pyramid level."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slidefed.client.slides import SlideSource

# The mask is computed on the coarsest level whose long side is at least this.
MASK_MIN_SIDE = 512


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


def tissue_mask_from_rgb(rgb: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """Tissue mask of an RGB image: saturation/darkness Otsu, then morphology."""
    img = rgb.astype(np.float32) / 255.0
    cmax = img.max(axis=2)
    cmin = img.min(axis=2)
    sat = np.where(cmax > 0, (cmax - cmin) / np.maximum(cmax, 1e-6), 0.0)
    darkness = 1.0 - img.mean(axis=2)
    score = np.maximum(sat, darkness)
    # Otsu alone splits dark tumour from pale stroma when both are present, so
    # clamp it: a floor keeps blank glass blank, a ceiling keeps pale tissue in.
    threshold = min(max(otsu_threshold(score.ravel()), 0.05), 0.15)
    mask = score > threshold
    mask = ndimage.binary_opening(mask, iterations=2)
    mask = ndimage.binary_closing(mask, iterations=2)
    return np.asarray(mask, dtype=bool)


def mask_level(slide: SlideSource) -> int:
    """The coarsest level whose long side is at least :data:`MASK_MIN_SIDE`."""
    best = 0
    for i, (w, h) in enumerate(slide.level_dimensions):
        if max(w, h) >= MASK_MIN_SIDE:
            best = i
    return best


def tissue_mask(slide: SlideSource) -> tuple[NDArray[np.bool_], float]:
    """Tissue mask of a slide and its downsample relative to level 0."""
    level = mask_level(slide)
    w, h = slide.level_dimensions[level]
    rgb = slide.read_region((0, 0), level, (w, h))
    return tissue_mask_from_rgb(rgb), slide.level_downsamples[level]


__all__ = ["mask_level", "otsu_threshold", "tissue_mask", "tissue_mask_from_rgb"]
