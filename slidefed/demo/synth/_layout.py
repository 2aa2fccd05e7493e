"""Where the tissue lies on a synthetic slide: pieces, holes, a fold, tumour regions.

Every map is drawn at ``1 / LOW`` of the slide resolution. The order of the random
draws is part of the output (same seed, same bytes): keep it when editing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from slidefed.demo.synth._fields import F32, ellipse_cone, grid, smooth_noise


@dataclass(frozen=True)
class Layout:
    """Low-resolution maps of one slide.

    Attributes
    ----------
    tissue : numpy.ndarray
        Signed tissue field in low-res pixels; ``> 0`` is tissue.
    fold : numpy.ndarray
        Fold weight in ``[0, 1]`` (1 in the middle of the fold band).
    tumour : numpy.ndarray
        Soft tumour weight in ``[0, 1]``; all zeros on normal slides.
    """

    tissue: F32
    fold: F32
    tumour: F32


def _pick_tissue_point(
    rng: np.random.Generator, inside: NDArray[np.bool_]
) -> tuple[float, float]:
    """A random low-res pixel centre with ``inside`` true (image centre if none)."""
    ys, xs = np.nonzero(inside)
    if ys.size == 0:
        return (inside.shape[0] / 2.0, inside.shape[1] / 2.0)
    k = int(rng.integers(ys.size))
    return (float(ys[k]), float(xs[k]))


def draw_layout(
    rng: np.random.Generator,
    h: int,
    w: int,
    tumour: bool,
    *,
    share: tuple[float, float] = (0.28, 0.45),
) -> Layout:
    """Draw the low-resolution layout of one slide.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    h, w : int
        Low-resolution size.
    tumour : bool
        Whether to draw tumour regions.
    share : tuple of float
        Range of the share of the tissue the tumour regions cover.

    Returns
    -------
    Layout
        The maps, each of shape ``(h, w)``.
    """
    yy, xx = grid(h, w)
    tissue = _tissue_field(rng, yy, xx)
    tissue = _cut_holes(rng, tissue, yy, xx)
    fold = _fold(rng, tissue, yy, xx)
    tmap = np.zeros((h, w), np.float32)
    if tumour:
        tmap = _tumour_map(rng, tissue, yy, xx, share)
    return Layout(tissue=tissue.astype(np.float32), fold=fold, tumour=tmap)


def _blob_ellipse(
    rng: np.random.Generator, b: int, n_blobs: int, h: int, w: int
) -> tuple[float, float, float, float]:
    """Centre and radii ``(cy, cx, ry, rx)`` of tissue piece ``b`` of ``n_blobs``.

    Two pieces sit side by side along the long axis of the slide.
    """
    if n_blobs == 1:
        cy = h * rng.uniform(0.42, 0.58)
        cx = w * rng.uniform(0.42, 0.58)
        ry = h * rng.uniform(0.30, 0.40)
        rx = w * rng.uniform(0.30, 0.40)
    elif w >= h:
        cy = h * rng.uniform(0.4, 0.6)
        cx = w * (rng.uniform(0.25, 0.32) if b == 0 else rng.uniform(0.68, 0.75))
        ry = h * rng.uniform(0.30, 0.38)
        rx = w * rng.uniform(0.17, 0.22)
    else:
        cx = w * rng.uniform(0.4, 0.6)
        cy = h * (rng.uniform(0.25, 0.32) if b == 0 else rng.uniform(0.68, 0.75))
        rx = w * rng.uniform(0.30, 0.38)
        ry = h * rng.uniform(0.17, 0.22)
    return cy, cx, ry, rx


def _tissue_field(rng: np.random.Generator, yy: F32, xx: F32) -> F32:
    """Signed tissue field of one or two irregular pieces (``> 0`` is tissue).

    The pieces cover 40-55 % of the slide and keep away from its border; the
    field is scaled to about one unit per low-res pixel from the edge.
    """
    h, w = yy.shape[0], xx.shape[1]
    short = float(min(h, w))

    # Irregular boundary: warp the coordinates with smooth noise.
    warp = short * 0.07
    wy = yy + np.float32(warp) * smooth_noise(rng, (h, w), short * 0.08)
    wx = xx + np.float32(warp) * smooth_noise(rng, (h, w), short * 0.08)

    n_blobs = int(rng.integers(1, 3))
    field = np.full((h, w), -1.0, np.float32)
    for b in range(n_blobs):
        cy, cx, ry, rx = _blob_ellipse(rng, b, n_blobs, h, w)
        angle = rng.uniform(-0.4, 0.4)
        cone = ellipse_cone(wy, wx, (cy, cx), (ry, rx), angle)
        field = np.maximum(field, cone)
    field += np.float32(0.12) * smooth_noise(rng, (h, w), short * 0.03)
    # Keep tissue away from the image border.
    border = np.minimum(np.minimum(yy, h - 1 - yy), np.minimum(xx, w - 1 - xx))
    ramp = np.clip(1.0 - border / np.float32(short * 0.15), 0, 1)
    field -= np.float32(1.5) * ramp * ramp

    coverage = rng.uniform(0.40, 0.55)
    thr = float(np.quantile(field, 1.0 - coverage))
    return np.asarray(
        (field - np.float32(thr)) * np.float32(short * 0.5), np.float32
    )  # ~low-res px


def _cut_holes(rng: np.random.Generator, tissue: F32, yy: F32, xx: F32) -> F32:
    """``tissue`` with two to five small elliptical gaps inside it."""
    short = float(min(tissue.shape))
    inside = tissue > short * 0.05
    for _ in range(int(rng.integers(2, 6))):
        cy, cx = _pick_tissue_point(rng, inside)
        r = rng.uniform(2.5, 7.0)  # low-res px: 20-56 px at full resolution
        radii = (r, r * rng.uniform(1.0, 2.5))
        cone = ellipse_cone(yy, xx, (cy, cx), radii, rng.uniform(0, math.pi))
        hole = np.clip(cone, 0, None) * np.float32(4.0 * r)
        tissue = tissue - hole * (tissue > 0) - np.float32(1.5) * (cone > 0)
    return tissue


def _fold(rng: np.random.Generator, tissue: F32, yy: F32, xx: F32) -> F32:
    """Fold weight: a wavy band across part of the tissue, centred well inside it."""
    h, w = tissue.shape
    short = float(min(h, w))
    depth = tissue[tissue > 0]
    deep = tissue >= (np.quantile(depth, 0.7) if depth.size else 0.0)
    cy, cx = _pick_tissue_point(rng, deep)
    theta = rng.uniform(0, math.pi)
    ny, nx = math.sin(theta), math.cos(theta)
    across = (yy - cy) * np.float32(ny) + (xx - cx) * np.float32(nx)
    across = across + np.float32(2.0) * smooth_noise(rng, (h, w), short * 0.1)
    along = -(yy - cy) * np.float32(nx) + (xx - cx) * np.float32(ny)
    half_w = rng.uniform(4.0, 8.0)  # low-res px: 64-128 px wide at full resolution
    half_l = short * rng.uniform(0.2, 0.4)
    fold_across = np.clip(1.5 * (1.0 - np.abs(across) / np.float32(half_w)), 0, 1)
    fold_along = np.clip((half_l - np.abs(along)) / np.float32(short * 0.05), 0, 1)
    return np.asarray(fold_across * fold_along, np.float32)


def _tumour_map(
    rng: np.random.Generator,
    tissue: F32,
    yy: F32,
    xx: F32,
    share: tuple[float, float],
) -> F32:
    """Soft weight of one to three contiguous tumour regions inside the tissue.

    The regions cover a share of the tissue area drawn from ``share``
    (28-45 % by default).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    tissue : numpy.ndarray
        Signed low-res tissue field (``> 0`` is tissue).
    yy, xx : numpy.ndarray
        Coordinate grids of the low-res map.
    share : tuple of float
        Range of the covered share of the tissue.

    Returns
    -------
    numpy.ndarray
        float32 weights in ``[0, 1]``.
    """
    h, w = tissue.shape
    is_tissue = tissue > 0
    area = float(is_tissue.sum())
    if area == 0:
        return np.zeros((h, w), np.float32)
    frac = rng.uniform(*share)
    n_regions = int(rng.integers(1, 4))
    radius = math.sqrt(frac * area / (n_regions * math.pi)) * 1.25
    deep = tissue > 3.0
    field = np.full((h, w), -1.0, np.float32)
    for _ in range(n_regions):
        centre = _pick_tissue_point(rng, deep if deep.any() else is_tissue)
        r = radius * rng.uniform(0.8, 1.2)
        cone = ellipse_cone(
            yy, xx, centre, (r, r * rng.uniform(0.8, 1.5)), rng.uniform(0, math.pi)
        )
        field = np.maximum(field, cone)
    field += np.float32(0.15) * smooth_noise(rng, (h, w), min(h, w) * 0.04)
    thr = float(np.quantile(field[is_tissue], 1.0 - frac))
    weight = np.clip((field - np.float32(thr)) * np.float32(8.0) + 0.5, 0, 1)
    return np.asarray(weight * is_tissue, np.float32)
