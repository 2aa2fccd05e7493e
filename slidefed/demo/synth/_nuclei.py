"""Nuclei of a synthetic slide: a bank of pre-rendered sprites stamped at random points.

Normal epithelial nuclei, small dark lymphocytes and, on tumour slides, large
irregular tumour nuclei with a nucleolus.  The points follow an inhomogeneous
Poisson process over the tissue (and over the tumour regions for tumour nuclei).
The order of the random draws is part of the output: keep it when editing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from slidefed.demo.synth._fields import F32, LOW, smooth_noise
from slidefed.demo.synth._layout import Layout


@dataclass(frozen=True)
class NucleusKind:
    """How the sprites of one kind of nucleus are drawn.

    Attributes
    ----------
    count : int
        Number of sprites in the bank.
    radius : tuple of float
        Range of the mean radius in pixels.
    aspect : tuple of float
        Range of the long-to-short axis ratio.
    conc : tuple of float
        Range of the peak concentration (optical density units).
    wobble : float
        Relative amplitude of the irregular outline.
    nucleolus : bool
        Whether to add a dark nucleolus dot.
    """

    count: int
    radius: tuple[float, float]
    aspect: tuple[float, float]
    conc: tuple[float, float]
    wobble: float
    nucleolus: bool


NORMAL = NucleusKind(24, (4.0, 6.5), (1.0, 2.0), (0.8, 1.1), 0.08, False)
LYMPHOCYTE = NucleusKind(6, (3.0, 3.8), (1.0, 1.15), (1.3, 1.6), 0.03, False)
TUMOUR = NucleusKind(32, (5.5, 8.5), (1.0, 1.6), (1.6, 2.1), 0.18, True)


@dataclass(frozen=True)
class Sprite:
    """A pre-rendered nucleus: flat offsets relative to a padded row stride."""

    dy: NDArray[np.intp]
    dx: NDArray[np.intp]
    value: F32


def sprite_bank(rng: np.random.Generator, kind: NucleusKind) -> list[Sprite]:
    """Render ``kind.count`` nucleus sprites (haematoxylin concentration).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    kind : NucleusKind
        Sizes, shapes and darkness of the nuclei.

    Returns
    -------
    list of Sprite
        The sprites; pixels with negligible value are dropped.
    """
    return [_sprite(rng, kind) for _ in range(kind.count)]


def _sprite(rng: np.random.Generator, kind: NucleusKind) -> Sprite:
    """Render one nucleus of ``kind``."""
    wobble = kind.wobble
    r = rng.uniform(*kind.radius)
    a = rng.uniform(*kind.aspect)
    rx, ry = r * math.sqrt(a), r / math.sqrt(a)
    half = math.ceil(max(rx, ry) * (1 + wobble) + 2)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float32)
    t = rng.uniform(0, math.pi)
    c, s = math.cos(t), math.sin(t)
    u = (xx * c + yy * s) / rx
    v = (-xx * s + yy * c) / ry
    d = np.sqrt(u * u + v * v)
    phi = np.arctan2(v, u)
    k1, k2 = rng.uniform(0, 2 * math.pi, size=2)
    edge = 1 + wobble * (0.6 * np.sin(2 * phi + k1) + 0.4 * np.sin(3 * phi + k2))
    # Soft edge of ~1 px, darker rim (nuclear membrane), granular chromatin.
    dist_px = (d / edge - 1) * r
    inside = np.clip(0.5 - dist_px, 0, 1)
    rim = np.exp(-((dist_px + 0.8) ** 2) / 0.8)
    grain = rng.uniform(0.75, 1.15, size=d.shape)
    val = inside * (0.85 * grain + 0.15 * rim)
    if kind.nucleolus:
        ny, nx = rng.uniform(-0.3 * ry, 0.3 * ry), rng.uniform(-0.3 * rx, 0.3 * rx)
        val += 0.5 * np.exp(-((yy - ny) ** 2 + (xx - nx) ** 2) / 1.5) * inside
    val *= rng.uniform(*kind.conc)
    keep = val > 0.02
    return Sprite(
        dy=yy[keep].astype(np.intp),
        dx=xx[keep].astype(np.intp),
        value=val[keep].astype(np.float32),
    )


def _stamp(
    canvas: F32,
    pad: int,
    ys: NDArray[np.intp],
    xs: NDArray[np.intp],
    bank: list[Sprite],
    choice: NDArray[np.intp],
    gain: F32,
) -> None:
    """Stamp sprites onto a padded canvas, keeping the per-pixel maximum.

    Parameters
    ----------
    canvas : numpy.ndarray
        float32 canvas of shape ``(height + 2 * pad, width + 2 * pad)``, changed
        in place.
    pad : int
        Padding on each side; must exceed every sprite's half size.
    ys, xs : numpy.ndarray
        Nucleus centres in unpadded image coordinates.
    bank : list of Sprite
        Sprites to choose from.
    choice : numpy.ndarray
        Index into ``bank`` for each nucleus.
    gain : numpy.ndarray
        Low-resolution map that scales each sprite (looked up at its centre).
    """
    stride = canvas.shape[1]
    flat = canvas.reshape(-1)
    amp = gain[ys // LOW, xs // LOW]
    for k, sprite in enumerate(bank):
        sel = choice == k
        if not sel.any():
            continue
        base = (ys[sel] + pad) * stride + (xs[sel] + pad)
        offs = sprite.dy * stride + sprite.dx
        idx = (base[:, None] + offs[None, :]).reshape(-1)
        vals = (amp[sel][:, None] * sprite.value[None, :]).reshape(-1)
        flat[idx] = np.maximum(flat[idx], vals)


def _sample_points(
    rng: np.random.Generator, density: F32, peak: float
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Draw points with an inhomogeneous Poisson process by thinning.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    density : numpy.ndarray
        Low-res map of the relative density in ``[0, 1]``; the points cover the
        full-resolution area ``density.shape * LOW``.
    peak : float
        Points per full-resolution pixel where ``density`` is 1.

    Returns
    -------
    tuple of numpy.ndarray
        Row and column coordinates of the accepted points.
    """
    height, width = density.shape[0] * LOW, density.shape[1] * LOW
    n = int(rng.poisson(peak * height * width))
    ys = rng.integers(0, height, size=n)
    xs = rng.integers(0, width, size=n)
    keep = rng.random(n, dtype=np.float32) < density[ys // LOW, xs // LOW]
    return ys[keep].astype(np.intp), xs[keep].astype(np.intp)


def stamp_nuclei(
    rng: np.random.Generator, lay: Layout, gain: F32, *, tumour: bool
) -> F32:
    """Haematoxylin of every nucleus of one slide, at the rendered full resolution.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    lay : Layout
        The slide's low-resolution maps.
    gain : numpy.ndarray
        Low-resolution map that scales each nucleus (looked up at its centre).
    tumour : bool
        Whether the slide holds tumour nuclei.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``lay.tissue.shape * LOW`` (a view of a padded
        canvas); where nuclei overlap, the darker one wins.
    """
    h, w = lay.tissue.shape
    normal_bank = sprite_bank(rng, NORMAL)
    lymph_bank = sprite_bank(rng, LYMPHOCYTE)
    tumour_bank = sprite_bank(rng, TUMOUR) if tumour else []
    pad = 1 + max(
        int(max(np.abs(sp.dy).max(initial=0), np.abs(sp.dx).max(initial=0)))
        for sp in normal_bank + lymph_bank + tumour_bank
    )
    canvas = np.zeros((h * LOW + 2 * pad, w * LOW + 2 * pad), np.float32)
    tissue_low = np.clip(lay.tissue * 0.5 - 0.5, 0, 1).astype(np.float32)
    normal_density = np.asarray(tissue_low * (1 - lay.tumour), np.float32)
    peak = 1.0 / rng.uniform(450, 700)
    _scatter(rng, canvas, pad, normal_density, peak, normal_bank, gain)
    _scatter(rng, canvas, pad, tissue_low, 1.0 / 6000.0, lymph_bank, gain)
    if tumour:
        nests = np.clip(0.75 + 0.45 * smooth_noise(rng, (h, w), 1.5), 0, 1)
        density = np.asarray(tissue_low * lay.tumour * nests, np.float32)
        peak = 1.0 / rng.uniform(150, 200)
        _scatter(rng, canvas, pad, density, peak, tumour_bank, gain)
    return canvas[pad:-pad, pad:-pad]


def _scatter(
    rng: np.random.Generator,
    canvas: F32,
    pad: int,
    density: F32,
    peak: float,
    bank: list[Sprite],
    gain: F32,
) -> None:
    """Draw nuclei at ``density`` (``peak`` per pixel at 1) and stamp them."""
    ys, xs = _sample_points(rng, density, peak)
    _stamp(canvas, pad, ys, xs, bank, rng.integers(0, len(bank), ys.size), gain)
