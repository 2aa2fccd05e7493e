"""Synthetic H&E-like whole-slide images and synthetic sites.

The slides are pyramidal, tiled, JPEG-compressed TIFF files that tiffslide and
openslide read as generic TIFF with an mpp (microns per pixel) value.  Their
content imitates haematoxylin and eosin (H&E) staining at 0.5 um/px: a near-white
background, one or two irregular tissue pieces with holes and a fold, pink
textured stroma and purple nuclei.  Tumour slides additionally hold one to three
contiguous tumour regions where nuclei are denser, larger and darker, so a
haematoxylin optical-density feature separates tumour tiles from normal tiles.

Everything is a deterministic function of the seed: two runs with the same seed
write byte-identical files (no timestamp and no software tag are stored).

The image is built from stain concentrations (Beer-Lambert law,
``rgb = I0 * exp(-(c_H * h_vec + c_E * e_vec))``): smooth fields are made at 1/8
resolution and upsampled bilinearly, the stroma (eosin, fibre texture) at 1/2
resolution, nuclei (haematoxylin) are stamped at full resolution from a small
bank of pre-rendered sprites, and the colours come from a per-slide look-up
table indexed by the dithered concentrations.  A default-size slide
(2560 x 2048) takes about a quarter of a second on one core.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import pydantic
import tifffile
from numpy.typing import NDArray
from scipy import ndimage

from slidefed.common.errors import ConfigError

__all__ = ["SynthSite", "synth_site", "write_synthetic_slide"]

F32 = NDArray[np.float32]
U8 = NDArray[np.uint8]
_T = TypeVar("_T", bound=np.generic)

_LOW = 8  # low-resolution factor for smooth fields
_MIN_SIDE = 256  # smallest accepted width / height; also the pyramid stop rule
_E_SCALE = 100.0  # LUT steps per unit of eosin optical density
_H_SCALE = 60.0  # LUT steps per unit of haematoxylin optical density
_N_NOISE = 4  # levels of additive intensity noise in the LUT (2 bits)

# Ruifrok & Johnston optical-density vectors (R, G, B), tuned to look like
# common scanner output.  Each slide perturbs them a little.
_H_VEC = np.array([0.65, 0.70, 0.29], dtype=np.float64)
_E_VEC = np.array([0.11, 0.90, 0.43], dtype=np.float64)


class SynthSite(pydantic.BaseModel):
    """What :func:`synth_site` wrote.

    Attributes
    ----------
    root : Path
        The output directory; slide paths in the manifest are relative to it.
    manifest : Path
        ``root / "manifest.csv"`` with columns ``slide,patient_id,label,split``.
    n_patients : int
        Number of patients.
    n_slides : int
        Number of slides (one to three per patient).
    n_tumour : int
        Number of tumour patients (label 1); all their slides have label 1.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    root: Path
    manifest: Path
    n_patients: int
    n_slides: int
    n_tumour: int


# ----------------------------------------------------------------------------
# small numeric helpers
# ----------------------------------------------------------------------------


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float
) -> F32:
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
        out = _upsample(out, shape[0], shape[1], factor=k)
    out -= np.float32(out.mean())
    std = float(out.std())
    out /= np.float32(std if std > 0 else 1.0)
    return out


def _upsample(low: F32, height: int, width: int, factor: int = _LOW) -> F32:
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


def _grid(h: int, w: int) -> tuple[F32, F32]:
    """Row and column coordinate grids (float32, broadcastable)."""
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    return yy, xx


def _ellipse_cone(
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


def _unit(v: NDArray[np.float64]) -> NDArray[np.float64]:
    """``v`` scaled to unit length."""
    return np.asarray(v / np.linalg.norm(v), np.float64)


# ----------------------------------------------------------------------------
# layout: tissue, holes, fold, tumour regions (all at 1/_LOW resolution)
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
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


def _layout(rng: np.random.Generator, h: int, w: int, tumour: bool) -> _Layout:
    """Draw the low-resolution layout of one slide.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    h, w : int
        Low-resolution size.
    tumour : bool
        Whether to draw tumour regions.

    Returns
    -------
    _Layout
        The maps, each of shape ``(h, w)``.
    """
    yy, xx = _grid(h, w)
    short = float(min(h, w))

    # Irregular boundary: warp the coordinates with smooth noise.
    warp = short * 0.07
    wy = yy + np.float32(warp) * _smooth_noise(rng, (h, w), short * 0.08)
    wx = xx + np.float32(warp) * _smooth_noise(rng, (h, w), short * 0.08)

    n_blobs = int(rng.integers(1, 3))
    field = np.full((h, w), -1.0, np.float32)
    for b in range(n_blobs):
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
        angle = rng.uniform(-0.4, 0.4)
        cone = _ellipse_cone(wy, wx, (cy, cx), (ry, rx), angle)
        field = np.maximum(field, cone)
    field += np.float32(0.12) * _smooth_noise(rng, (h, w), short * 0.03)
    # Keep tissue away from the image border.
    border = np.minimum(np.minimum(yy, h - 1 - yy), np.minimum(xx, w - 1 - xx))
    ramp = np.clip(1.0 - border / np.float32(short * 0.15), 0, 1)
    field -= np.float32(1.5) * ramp * ramp

    coverage = rng.uniform(0.40, 0.55)
    thr = float(np.quantile(field, 1.0 - coverage))
    tissue = (field - np.float32(thr)) * np.float32(short * 0.5)  # ~low-res px

    # Holes: small elliptical gaps inside the tissue.
    inside = tissue > short * 0.05
    for _ in range(int(rng.integers(2, 6))):
        cy, cx = _pick_tissue_point(rng, inside)
        r = rng.uniform(2.5, 7.0)  # low-res px: 20-56 px at full resolution
        radii = (r, r * rng.uniform(1.0, 2.5))
        cone = _ellipse_cone(yy, xx, (cy, cx), radii, rng.uniform(0, math.pi))
        hole = np.clip(cone, 0, None) * np.float32(4.0 * r)
        tissue = tissue - hole * (tissue > 0) - np.float32(1.5) * (cone > 0)

    # Fold: a wavy band across part of the tissue, centred well inside it.
    depth = tissue[tissue > 0]
    deep = tissue >= (np.quantile(depth, 0.7) if depth.size else 0.0)
    cy, cx = _pick_tissue_point(rng, deep)
    theta = rng.uniform(0, math.pi)
    ny, nx = math.sin(theta), math.cos(theta)
    across = (yy - cy) * np.float32(ny) + (xx - cx) * np.float32(nx)
    across = across + np.float32(2.0) * _smooth_noise(rng, (h, w), short * 0.1)
    along = -(yy - cy) * np.float32(nx) + (xx - cx) * np.float32(ny)
    half_w = rng.uniform(4.0, 8.0)  # low-res px: 64-128 px wide at full resolution
    half_l = short * rng.uniform(0.2, 0.4)
    fold_across = np.clip(1.5 * (1.0 - np.abs(across) / np.float32(half_w)), 0, 1)
    fold_along = np.clip((half_l - np.abs(along)) / np.float32(short * 0.05), 0, 1)
    fold = np.asarray(fold_across * fold_along, np.float32)

    tmap = np.zeros((h, w), np.float32)
    if tumour:
        tmap = _tumour_map(rng, tissue, yy, xx)
    return _Layout(tissue=tissue.astype(np.float32), fold=fold, tumour=tmap)


def _tumour_map(rng: np.random.Generator, tissue: F32, yy: F32, xx: F32) -> F32:
    """Soft weight of one to three contiguous tumour regions inside the tissue.

    The regions cover 28-45 % of the tissue area.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    tissue : numpy.ndarray
        Signed low-res tissue field (``> 0`` is tissue).
    yy, xx : numpy.ndarray
        Coordinate grids of the low-res map.

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
    frac = rng.uniform(0.28, 0.45)
    n_regions = int(rng.integers(1, 4))
    radius = math.sqrt(frac * area / (n_regions * math.pi)) * 1.25
    deep = tissue > 3.0
    field = np.full((h, w), -1.0, np.float32)
    for _ in range(n_regions):
        centre = _pick_tissue_point(rng, deep if deep.any() else is_tissue)
        r = radius * rng.uniform(0.8, 1.2)
        cone = _ellipse_cone(
            yy, xx, centre, (r, r * rng.uniform(0.8, 1.5)), rng.uniform(0, math.pi)
        )
        field = np.maximum(field, cone)
    field += np.float32(0.15) * _smooth_noise(rng, (h, w), min(h, w) * 0.04)
    thr = float(np.quantile(field[is_tissue], 1.0 - frac))
    weight = np.clip((field - np.float32(thr)) * np.float32(8.0) + 0.5, 0, 1)
    return np.asarray(weight * is_tissue, np.float32)


# ----------------------------------------------------------------------------
# nuclei
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sprite:
    """A pre-rendered nucleus: flat offsets relative to a padded row stride."""

    dy: NDArray[np.intp]
    dx: NDArray[np.intp]
    value: F32


def _sprite_bank(
    rng: np.random.Generator,
    n: int,
    radius: tuple[float, float],
    aspect: tuple[float, float],
    conc: tuple[float, float],
    wobble: float,
    nucleolus: bool,
) -> list[_Sprite]:
    """Render ``n`` nucleus sprites (haematoxylin concentration).

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    n : int
        Number of sprites.
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

    Returns
    -------
    list of _Sprite
        The sprites; pixels with negligible value are dropped.
    """
    bank: list[_Sprite] = []
    for _ in range(n):
        r = rng.uniform(*radius)
        a = rng.uniform(*aspect)
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
        if nucleolus:
            ny, nx = rng.uniform(-0.3 * ry, 0.3 * ry), rng.uniform(-0.3 * rx, 0.3 * rx)
            val += 0.5 * np.exp(-((yy - ny) ** 2 + (xx - nx) ** 2) / 1.5) * inside
        val *= rng.uniform(*conc)
        keep = val > 0.02
        bank.append(
            _Sprite(
                dy=yy[keep].astype(np.intp),
                dx=xx[keep].astype(np.intp),
                value=val[keep].astype(np.float32),
            )
        )
    return bank


def _stamp(
    canvas: F32,
    pad: int,
    ys: NDArray[np.intp],
    xs: NDArray[np.intp],
    bank: list[_Sprite],
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
    bank : list of _Sprite
        Sprites to choose from.
    choice : numpy.ndarray
        Index into ``bank`` for each nucleus.
    gain : numpy.ndarray
        Low-resolution map that scales each sprite (looked up at its centre).
    """
    stride = canvas.shape[1]
    flat = canvas.reshape(-1)
    amp = gain[ys // _LOW, xs // _LOW]
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
        full-resolution area ``density.shape * _LOW``.
    peak : float
        Points per full-resolution pixel where ``density`` is 1.

    Returns
    -------
    tuple of numpy.ndarray
        Row and column coordinates of the accepted points.
    """
    height, width = density.shape[0] * _LOW, density.shape[1] * _LOW
    n = int(rng.poisson(peak * height * width))
    ys = rng.integers(0, height, size=n)
    xs = rng.integers(0, width, size=n)
    keep = rng.random(n, dtype=np.float32) < density[ys // _LOW, xs // _LOW]
    return ys[keep].astype(np.intp), xs[keep].astype(np.intp)


# ----------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------


def _stain_lut(
    h_vec: NDArray[np.float64], e_vec: NDArray[np.float64], i0: NDArray[np.float64]
) -> U8:
    """Colour look-up table indexed by ``(haematoxylin, eosin, noise)``.

    Parameters
    ----------
    h_vec, e_vec : numpy.ndarray
        Optical-density vectors (R, G, B) of haematoxylin and eosin.
    i0 : numpy.ndarray
        Background (illumination) intensity per channel.

    Returns
    -------
    numpy.ndarray
        uint8 array of shape ``(256 * 256 * _N_NOISE, 3)``; row
        ``(hi << 10) | (ei << 2) | n`` is the colour for haematoxylin
        ``hi / _H_SCALE``, eosin ``ei / _E_SCALE`` (optical density) and
        additive intensity noise level ``n``.
    """
    hh = np.arange(256, dtype=np.float64) / _H_SCALE
    e = np.arange(256, dtype=np.float64) / _E_SCALE
    od = hh[:, None, None] * h_vec + e[None, :, None] * e_vec  # (256, 256, 3)
    rgb = np.exp(-od) * i0
    noise = (np.arange(_N_NOISE, dtype=np.float64) - (_N_NOISE - 1) / 2) * 1.6
    lut = rgb[:, :, None, :] + noise[None, None, :, None]
    return np.clip(np.rint(lut), 0, 255).astype(np.uint8).reshape(-1, 3)


def _render(seed: int, tumour: bool, width: int, height: int) -> tuple[U8, F32]:
    """Render the level-0 RGB image of one slide.

    Parameters
    ----------
    seed : int
        Seed of the slide.
    tumour : bool
        Whether the slide holds tumour regions.
    width, height : int
        Size in pixels.

    Returns
    -------
    rgb : numpy.ndarray
        uint8 array of shape ``(height, width, 3)``.
    tumour_weight : numpy.ndarray
        The 1/8-resolution tumour weight in ``[0, 1]`` (ground truth; zeros on
        normal slides).
    """
    rng = np.random.default_rng(seed)
    h, w = -(-height // _LOW), -(-width // _LOW)
    big_h, big_w = h * _LOW, w * _LOW  # rendered size; cropped at the end
    lay = _layout(rng, h, w, tumour)

    # Per-slide stain appearance.
    h_vec = _unit(_H_VEC + rng.uniform(-0.05, 0.05, 3))
    e_vec = _unit(_E_VEC + rng.uniform(-0.05, 0.05, 3))
    e_level = rng.uniform(0.35, 0.5)
    h_level = rng.uniform(0.9, 1.1)
    i0 = rng.uniform(237, 243) + rng.uniform(-1.5, 1.5, 3)
    lut = _stain_lut(h_vec, e_vec, i0)

    # Smooth stain concentrations at low resolution (fold included), in LUT
    # steps.
    fold = 1 + np.float32(rng.uniform(0.8, 1.1)) * lay.fold
    e_var = 1 + np.float32(0.15) * _smooth_noise(rng, (h, w), 6.0)
    e_low = np.float32(e_level * _E_SCALE) * e_var * (1 - np.float32(0.3) * lay.tumour)
    hb_low = np.float32(0.06 * h_level * _H_SCALE) * (1 + np.float32(1.5) * lay.tumour)
    e_low *= fold
    hb_low *= fold

    # Stroma at half resolution: tissue alpha, fibre texture, eosin index.
    f = _LOW // 2
    half_h, half_w = h * f, w * f
    stroma = _upsample(lay.tissue * np.float32(f / 2.0), half_h, half_w, factor=f)
    stroma += np.float32(0.5)
    np.clip(stroma, 0, 1, out=stroma)  # tissue alpha, edge ~1 half-res px
    stroma *= _fibres(rng, h, w)
    e_half = _upsample(e_low, half_h, half_w, factor=f)
    e_half *= stroma
    e_half += rng.random((half_h, half_w), dtype=np.float32)  # dither
    np.minimum(e_half, np.float32(255), out=e_half)
    e_idx = e_half.astype(np.int32)
    e_idx <<= 2
    h_half = _upsample(hb_low, half_h, half_w, factor=f)
    h_half *= stroma

    # Nuclei: sprites stamped on a padded canvas; brightness follows the fold.
    normal_bank = _sprite_bank(rng, 24, (4.0, 6.5), (1.0, 2.0), (0.8, 1.1), 0.08, False)
    lymph_bank = _sprite_bank(rng, 6, (3.0, 3.8), (1.0, 1.15), (1.3, 1.6), 0.03, False)
    tumour_bank = (
        _sprite_bank(rng, 32, (5.5, 8.5), (1.0, 1.6), (1.6, 2.1), 0.18, True)
        if tumour
        else []
    )
    pad = 1 + max(
        int(max(np.abs(sp.dy).max(initial=0), np.abs(sp.dx).max(initial=0)))
        for sp in normal_bank + lymph_bank + tumour_bank
    )
    canvas = np.zeros((big_h + 2 * pad, big_w + 2 * pad), np.float32)
    tissue_low = np.clip(lay.tissue * 0.5 - 0.5, 0, 1).astype(np.float32)
    gain = fold * np.float32(h_level * _H_SCALE)
    normal_density = np.asarray(tissue_low * (1 - lay.tumour), np.float32)
    ys, xs = _sample_points(rng, normal_density, 1.0 / rng.uniform(450, 700))
    _stamp(canvas, pad, ys, xs, normal_bank, rng.integers(0, 24, ys.size), gain)
    ys, xs = _sample_points(rng, tissue_low, 1.0 / 6000.0)
    _stamp(canvas, pad, ys, xs, lymph_bank, rng.integers(0, 6, ys.size), gain)
    if tumour:
        nests = np.clip(0.75 + 0.45 * _smooth_noise(rng, (h, w), 1.5), 0, 1)
        density = np.asarray(tissue_low * lay.tumour * nests, np.float32)
        ys, xs = _sample_points(rng, density, 1.0 / rng.uniform(150, 200))
        _stamp(canvas, pad, ys, xs, tumour_bank, rng.integers(0, 32, ys.size), gain)

    # Full resolution: haematoxylin = stroma + nuclei, dithered; random bits
    # give the dither (high 6 bits) and the LUT noise level (low 2 bits).
    bits = np.frombuffer(rng.bytes(big_h * big_w), np.uint8).reshape(big_h, big_w)
    h_c = _double(h_half)
    h_c += canvas[pad:-pad, pad:-pad]
    h_c += (bits >> 2) * np.float32(1 / 64)
    np.minimum(h_c, np.float32(255), out=h_c)
    idx = h_c.astype(np.int32)
    idx <<= 10
    idx |= _double(e_idx)
    idx |= bits & np.uint8(_N_NOISE - 1)
    rgb = np.take(lut, idx, axis=0)
    return np.asarray(rgb[:height, :width], np.uint8), lay.tumour


def _double(a: NDArray[_T]) -> NDArray[_T]:
    """Repeat every element of a 2-D array 2x2 (nearest-neighbour upsampling)."""
    return np.repeat(np.repeat(a, 2, axis=0), 2, axis=1)


def _fibres(rng: np.random.Generator, h: int, w: int) -> F32:
    """Multiplicative stroma texture at half resolution: wavy fibres.

    Noise is smoothed strongly along one axis and little across it, then every
    column is shifted by a smooth random displacement, which bends the fibres.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    h, w : int
        Low-resolution size; the output is ``(h * _LOW // 2, w * _LOW // 2)``.

    Returns
    -------
    numpy.ndarray
        float32 texture with mean ~1 and values >= 0.2.
    """
    f = _LOW // 2
    vertical = bool(rng.integers(0, 2))
    lh, lw = (w, h) if vertical else (h, w)  # made as horizontal fibres
    rows, cols = lh * f, lw * f
    margin = 40  # rows; bounds the displacement
    base = ndimage.uniform_filter1d(
        rng.random((rows + 2 * margin + 4, cols), dtype=np.float32),
        7,
        axis=1,
        mode="wrap",
    )
    base = ndimage.uniform_filter1d(base, 5, axis=1, mode="wrap")
    # Across: binomial [1, 4, 6, 4, 1] / 16 (sigma 1), on whole rows.
    base = (
        (base[:-4] + base[4:])
        + np.float32(4) * (base[1:-3] + base[3:-1])
        + np.float32(6) * base[2:-2]
    )
    base -= np.float32(base.mean())
    base *= np.float32(0.3 / max(float(base.std()), 1e-6))
    base += np.float32(1)
    np.maximum(base, np.float32(0.2), out=base)
    # Smooth vertical displacement (half-res px) with gentle slopes.
    disp_low = _smooth_noise(rng, (lh, lw), 6.0) * np.float32(10.0)
    np.clip(disp_low, 1 - margin, margin - 1, out=disp_low)
    disp_low += np.float32(margin)
    idx = _upsample(disp_low, rows, cols, factor=f).astype(np.intp)
    idx *= cols
    idx += np.arange(rows * cols, dtype=np.intp).reshape(rows, cols)
    fib = np.take(base.reshape(-1), idx)
    if vertical:
        fib = np.ascontiguousarray(fib.T)
    return np.asarray(fib, np.float32)


def _halve(img: U8) -> U8:
    """2x2 box downsampling of an RGB image (odd edge rows/cols dropped)."""
    h2, w2 = img.shape[0] // 2, img.shape[1] // 2
    rows = img[: 2 * h2, : 2 * w2].reshape(h2, 2, w2 * 6)
    pairs = np.add(rows[:, 0], rows[:, 1], dtype=np.uint16).reshape(h2, w2, 2, 3)
    total = np.add(pairs[:, :, 0], pairs[:, :, 1])
    total += 2
    total >>= 2
    return total.astype(np.uint8)


# ----------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------


def _check_slide_args(
    seed: int, width: int, height: int, mpp: float, tile: int, quality: int
) -> None:
    """Raise :class:`ConfigError` for arguments that cannot make a slide."""
    if seed < 0:
        raise ConfigError(f"seed must be >= 0 (got {seed}); pass a non-negative seed")
    if width < _MIN_SIDE or height < _MIN_SIDE:
        raise ConfigError(
            f"width/height must be >= {_MIN_SIDE} px (got {width}x{height}); "
            "pass a larger size"
        )
    if not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"mpp must be a positive number (got {mpp}); e.g. mpp=0.5")
    if tile < 16 or tile % 16:
        raise ConfigError(
            f"tile must be a positive multiple of 16 (got {tile}); e.g. tile=256"
        )
    if not 1 <= quality <= 100:
        raise ConfigError(f"quality must be in 1..100 (got {quality}); e.g. 85")


def write_synthetic_slide(
    path: Path,
    *,
    seed: int,
    tumour: bool,
    width: int = 2560,
    height: int = 2048,
    mpp: float = 0.5,
    tile: int = 256,
    quality: int = 85,
) -> None:
    """Write a synthetic H&E-like whole-slide image.

    Pyramidal, tiled, JPEG-compressed TIFF (levels 1, 1/2, 1/4, 1/8 ... while
    the short side >= 256 px -> at least 4 levels at the default size) with mpp
    metadata.  The levels are top-level pages (reduced levels have
    ``subfiletype=1``, no SubIFDs) with the resolution in pixels per centimetre,
    so tiffslide and openslide both read every level and ``mpp``.

    Parameters
    ----------
    path : Path
        Output file; its parent directory must exist.
    seed : int
        Non-negative seed; the file is a deterministic function of all arguments.
    tumour : bool
        Add tumour regions (25-50 % of the tissue) with dense, large, dark nuclei.
    width, height : int
        Level-0 size in pixels, each >= 256.
    mpp : float
        Level-0 microns per pixel.
    tile : int
        Tile size in pixels, a multiple of 16.
    quality : int
        JPEG quality, 1-100.

    Raises
    ------
    ConfigError
        If an argument is out of range.
    """
    _check_slide_args(seed, width, height, mpp, tile, quality)
    level, _ = _render(seed, tumour, width, height)
    px_per_cm = 10_000.0 / mpp
    with tifffile.TiffWriter(path, bigtiff=False) as tw:
        k = 0
        while True:
            res = px_per_cm / 2**k
            tw.write(
                level,
                photometric="rgb",
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": quality},
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=0 if k == 0 else 1,
                metadata=None,
                software=False,
                datetime=None,
            )
            if min(level.shape[:2]) // 2 < _MIN_SIDE:
                break
            level = _halve(level)
            k += 1


def _split_counts(n_class: int, patients: int, test_fraction: float) -> int:
    """Number of test patients of one class.

    ``round(n_class * test_fraction)``, at least ``min(2, n_class)`` when
    ``patients >= 8``, and leaving at least one patient of the class for
    training where that does not break the minimum.
    """
    lo = min(2, n_class) if patients >= 8 else 0
    hi = max(lo, n_class - 1) if n_class >= 2 else n_class
    return max(lo, min(hi, round(n_class * test_fraction)))


def synth_site(
    out_dir: Path,
    *,
    patients: int,
    seed: int,
    tumour_fraction: float = 0.5,
    test_fraction: float = 0.3,
    width: int = 2560,
    height: int = 2048,
    progress: Callable[[int, int], None] | None = None,
) -> SynthSite:
    """Write a synthetic site: slides plus a manifest.

    Writes ``out_dir/slides/<patient>-<k>.tif`` (patients ``P0001``...,
    one to three slides each, drawn from ``seed``) and ``out_dir/manifest.csv``
    with the header ``slide,patient_id,label,split``; ``slide`` is relative to
    ``out_dir``, ``label`` is ``0`` (normal) or ``1`` (tumour), ``split`` is
    ``train`` or ``test``.  ``round(patients * tumour_fraction)`` patients are
    tumour patients and all their slides are tumour slides.  Splits are by
    patient and stratified by class: each class sends
    ``round(n_class * test_fraction)`` patients to test, at least
    ``min(2, n_class)`` when ``patients >= 8``, and keeps one in train where
    that minimum allows it.

    Parameters
    ----------
    out_dir : Path
        Output directory, created if missing.  Existing files of the same
        names are overwritten.
    patients : int
        Number of patients, >= 1.
    seed : int
        Non-negative seed; the whole output is a deterministic function of the
        arguments.
    tumour_fraction : float
        Fraction of tumour patients, in ``[0, 1]``.
    test_fraction : float
        Fraction of each class's patients in the test split, in ``(0, 1)``.
    width, height : int
        Level-0 slide size in pixels, each >= 256.
    progress : callable, optional
        Called as ``progress(done, total)`` after each slide.

    Returns
    -------
    SynthSite
        Paths and counts of what was written.

    Raises
    ------
    ConfigError
        If an argument is out of range.
    """
    if patients < 1:
        raise ConfigError(f"patients must be >= 1 (got {patients}); pass patients=8")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0 (got {seed}); pass a non-negative seed")
    if not 0.0 <= tumour_fraction <= 1.0:
        raise ConfigError(
            f"tumour_fraction must be in [0, 1] (got {tumour_fraction}); e.g. 0.5"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(
            f"test_fraction must be in (0, 1) (got {test_fraction}); e.g. 0.3"
        )
    _check_slide_args(seed, width, height, 0.5, 256, 85)

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    n_tumour = round(patients * tumour_fraction)
    is_tumour = np.zeros(patients, dtype=bool)
    is_tumour[rng.permutation(patients)[:n_tumour]] = True
    in_test = np.zeros(patients, dtype=bool)
    for cls in (False, True):
        members = np.flatnonzero(is_tumour == cls)
        k = _split_counts(members.size, patients, test_fraction)
        in_test[rng.permutation(members)[:k]] = True
    n_per = rng.integers(1, 4, size=patients)

    slides_dir = out_dir / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    total = int(n_per.sum())
    rows: list[tuple[str, str, str, str]] = []
    done = 0
    for i in range(patients):
        pid = f"P{i + 1:04d}"
        for k in range(1, int(n_per[i]) + 1):
            name = f"{pid}-{k}.tif"
            slide_seed = int(np.random.SeedSequence([seed, i, k]).generate_state(1)[0])
            write_synthetic_slide(
                slides_dir / name,
                seed=slide_seed,
                tumour=bool(is_tumour[i]),
                width=width,
                height=height,
            )
            rows.append(
                (
                    f"slides/{name}",
                    pid,
                    "1" if is_tumour[i] else "0",
                    "test" if in_test[i] else "train",
                )
            )
            done += 1
            if progress is not None:
                progress(done, total)

    manifest = out_dir / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(("slide", "patient_id", "label", "split"))
        writer.writerows(rows)
    return SynthSite(
        root=out_dir,
        manifest=manifest,
        n_patients=patients,
        n_slides=total,
        n_tumour=n_tumour,
    )
