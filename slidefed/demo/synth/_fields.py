"""Smooth random fields and grid helpers of the synthetic slide renderer.

Smooth fields are made at ``1 / LOW`` of the slide resolution and upsampled
bilinearly; everything here is a pure function of its inputs (and of the random
generator's state, where one is passed).
"""

from __future__ import annotations

import math
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]
_T = TypeVar("_T", bound=np.generic)

LOW = 8  # low-resolution factor for smooth fields


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> F32:
    """Isotropic smooth random field scaled to unit standard deviation.

    White noise is Gaussian-filtered; for large ``sigma`` this is done on a
    grid coarser by a power of two and upsampled bilinearly, which looks the
    same and is much faster.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    shape : tuple of int
        Output shape ``(rows, cols)``.
    sigma : float
        Standard deviation of the Gaussian filter in output pixels.

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape`` with mean ~0 and standard deviation 1.
    """
    k = 1
    while sigma / (2 * k) >= 2.0:
        k *= 2
    small = (-(-shape[0] // k), -(-shape[1] // k))
    noise = rng.random(small, dtype=np.float32)
    out = np.asarray(ndimage.gaussian_filter(noise, sigma / k, mode="wrap"), np.float32)
    if k > 1:
        out = upsample(out, shape[0], shape[1], factor=k)
    out -= np.float32(out.mean())
    std = float(out.std())
    out /= np.float32(std if std > 0 else 1.0)
    return out


def upsample(low: F32, height: int, width: int, factor: int = LOW) -> F32:
    """Bilinear upsampling of a low-resolution map to ``(height, width)``.

    Low-resolution pixel ``i`` covers output pixels
    ``[i * factor, (i + 1) * factor)``; values are interpolated between pixel
    centres and held constant beyond the outermost centres (as
    ``scipy.ndimage.zoom(order=1, grid_mode=True, mode="nearest")``).

    Parameters
    ----------
    low : numpy.ndarray
        float32 array of shape ``(ceil(height / factor), ceil(width / factor))``.
    height, width : int
        Output size in pixels.
    factor : int
        Even upsampling factor.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``(height, width)``.
    """
    h, w = low.shape
    # Columns first, on the small array (gather + lerp).
    pos = (np.arange(width, dtype=np.float64) + 0.5) / factor - 0.5
    pos = np.clip(pos, 0.0, w - 1.0)
    x0 = np.floor(pos).astype(np.intp)
    x1 = np.minimum(x0 + 1, w - 1)
    wx = (pos - x0).astype(np.float32)
    cols = low[:, x0] * (1 - wx) + low[:, x1] * wx  # (h, width)
    # Rows: within each block of ``factor`` rows the weights repeat, so lerp with
    # broadcasting instead of gathering.
    padded = np.concatenate([cols[:1], cols, cols[-1:]], axis=0)  # (h + 2, width)
    diff = np.diff(padded, axis=0)  # (h + 1, width)
    half = factor // 2
    out = np.empty((h, factor, width), np.float32)
    for j in range(factor):
        # Output row i * factor + j lies between low rows (i - 1, i) for the
        # first half of the block and (i, i + 1) for the second half.
        lo = 0 if j < half else 1
        weight = np.float32((j + 0.5) / factor + (0.5 if j < half else -0.5))
        dst = out[:, j]
        np.multiply(diff[lo : lo + h], weight, out=dst)
        dst += padded[lo : lo + h]
    return out.reshape(h * factor, width)[:height]


def grid(h: int, w: int) -> tuple[F32, F32]:
    """Row and column coordinate grids (float32, broadcastable)."""
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    return yy, xx


def ellipse_cone(
    yy: F32,
    xx: F32,
    centre: tuple[float, float],
    radii: tuple[float, float],
    angle: float,
) -> F32:
    """``1 - d`` where ``d`` is the normalised elliptical distance to ``centre``."""
    cy, cx = centre
    ry, rx = radii
    c, s = math.cos(angle), math.sin(angle)
    dy = yy - np.float32(cy)
    dx = xx - np.float32(cx)
    u = (dx * np.float32(c) + dy * np.float32(s)) / np.float32(rx)
    v = (-dx * np.float32(s) + dy * np.float32(c)) / np.float32(ry)
    return np.asarray(1.0 - np.sqrt(u * u + v * v), np.float32)


def unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    """``v`` scaled to unit length."""
    return np.asarray(v / np.linalg.norm(v), np.float64)


def double(a: NDArray[_T]) -> NDArray[_T]:
    """Repeat every element of a 2-D array 2x2 (nearest-neighbour upsampling)."""
    return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)
