"""The pixels of a synthetic H&E slide, from stain concentrations.

Beer-Lambert law, ``rgb = I0 * exp(-(c_H * h_vec + c_E * e_vec))``: smooth
fields are made at ``1 / LOW`` resolution and upsampled bilinearly, the stroma
(eosin, fibre texture) at 1/2 resolution, nuclei (haematoxylin) are stamped at
full resolution, and the colours come from a per-slide look-up table indexed by
the dithered concentrations.  The order of the random draws is part of the
output (same seed, same bytes): keep it when editing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from slidefed.demo.synth._fields import (
    F32,
    LOW,
    U8,
    double,
    smooth_noise,
    unit,
    upsample,
)
from slidefed.demo.synth._layout import Layout, draw_layout
from slidefed.demo.synth._nuclei import stamp_nuclei

E_SCALE = 100.0  # LUT steps per unit of eosin optical density
H_SCALE = 60.0  # LUT steps per unit of haematoxylin optical density
N_NOISE = 4  # levels of additive intensity noise in the LUT (2 bits)

# Ruifrok & Johnston optical-density vectors (R, G, B), tuned to look like
# common scanner output.  Each slide perturbs them a little.
_H_VEC = np.array([0.65, 0.70, 0.29], dtype=np.float64)
_E_VEC = np.array([0.11, 0.90, 0.43], dtype=np.float64)


@dataclass(frozen=True)
class Look:
    """How one hospital's slides differ from the default ones.

    Attributes
    ----------
    tumour_share : tuple of float
        Range of the share of the tissue that tumour regions cover.
    h_shift, e_shift : float
        Added to the slide's haematoxylin and eosin levels (the lab's staining).
    tint : tuple of float
        Added to the background intensity per channel (the scanner's white).
    """

    tumour_share: tuple[float, float] = (0.28, 0.45)
    h_shift: float = 0.0
    e_shift: float = 0.0
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)


DEFAULT_LOOK = Look()


@dataclass(frozen=True)
class _Stain:
    """The staining of one slide: colour table and stain levels."""

    lut: U8
    e_level: float
    h_level: float


def render(
    seed: int, tumour: bool, width: int, height: int, look: Look = DEFAULT_LOOK
) -> tuple[U8, F32]:
    """Render the level-0 RGB image of one slide.

    Parameters
    ----------
    seed : int
        Seed of the slide.
    tumour : bool
        Whether the slide holds tumour regions.
    width, height : int
        Size in pixels.
    look : Look
        The hospital's staining and tumour extent (the default draws exactly
        what earlier versions drew).

    Returns
    -------
    rgb : numpy.ndarray
        uint8 array of shape ``(height, width, 3)``.
    tumour_weight : numpy.ndarray
        The 1/8-resolution tumour weight in ``[0, 1]`` (ground truth; zeros on
        normal slides).
    """
    rng = np.random.default_rng(seed)
    h, w = -(-height // LOW), -(-width // LOW)
    lay = draw_layout(rng, h, w, tumour, share=look.tumour_share)
    stain = _draw_stain(rng, look)
    fold = 1 + np.float32(rng.uniform(0.8, 1.1)) * lay.fold
    e_idx, h_half = _stroma(rng, lay, fold, stain)
    gain = fold * np.float32(stain.h_level * H_SCALE)
    nuclei = stamp_nuclei(rng, lay, gain, tumour=tumour)
    rgb = _compose(rng, stain.lut, h_half, e_idx, nuclei)
    return np.asarray(rgb[:height, :width], np.uint8), lay.tumour


def _draw_stain(rng: np.random.Generator, look: Look) -> _Stain:
    """Per-slide stain appearance: perturbed stain vectors, levels, background."""
    h_vec = unit(_H_VEC + rng.uniform(-0.05, 0.05, 3))
    e_vec = unit(_E_VEC + rng.uniform(-0.05, 0.05, 3))
    e_level = rng.uniform(0.35, 0.5) + look.e_shift
    h_level = rng.uniform(0.9, 1.1) + look.h_shift
    i0 = rng.uniform(237, 243) + rng.uniform(-1.5, 1.5, 3) + np.asarray(look.tint)
    lut = _stain_lut(h_vec, e_vec, i0)
    return _Stain(lut=lut, e_level=e_level, h_level=h_level)


def _stroma(
    rng: np.random.Generator, lay: Layout, fold: F32, stain: _Stain
) -> tuple[NDArray[np.int32], F32]:
    """Stroma at half resolution: eosin LUT index and haematoxylin background.

    Returns
    -------
    e_idx : numpy.ndarray
        Dithered eosin concentration in LUT steps, shifted into bits 2-9 of the
        LUT index.
    h_half : numpy.ndarray
        Haematoxylin of the stroma in LUT steps (not yet dithered).
    """
    h, w = lay.tissue.shape
    # Smooth stain concentrations at low resolution (fold included), in LUT
    # steps.
    e_var = 1 + np.float32(0.15) * smooth_noise(rng, (h, w), 6.0)
    e_low = (
        np.float32(stain.e_level * E_SCALE) * e_var * (1 - np.float32(0.3) * lay.tumour)
    )
    hb_low = np.float32(0.06 * stain.h_level * H_SCALE) * (
        1 + np.float32(1.5) * lay.tumour
    )
    e_low *= fold
    hb_low *= fold

    # Tissue alpha, fibre texture, eosin index.
    f = LOW // 2
    half_h, half_w = h * f, w * f
    stroma = upsample(lay.tissue * np.float32(f / 2.0), half_h, half_w, factor=f)
    stroma += np.float32(0.5)
    np.clip(stroma, 0, 1, out=stroma)  # tissue alpha, edge ~1 half-res px
    stroma *= _fibres(rng, h, w)
    e_half = upsample(e_low, half_h, half_w, factor=f)
    e_half *= stroma
    e_half += rng.random((half_h, half_w), dtype=np.float32)  # dither
    np.minimum(e_half, np.float32(255), out=e_half)
    e_idx = e_half.astype(np.int32)
    e_idx <<= 2
    h_half = upsample(hb_low, half_h, half_w, factor=f)
    h_half *= stroma
    return e_idx, h_half


def _compose(
    rng: np.random.Generator,
    lut: U8,
    h_half: F32,
    e_idx: NDArray[np.int32],
    nuclei: F32,
) -> U8:
    """Full-resolution RGB: haematoxylin = stroma + nuclei, dithered, via the LUT.

    Random bits give the dither (high 6 bits) and the LUT noise level (low 2 bits).
    """
    big_h, big_w = nuclei.shape
    bits = np.frombuffer(rng.bytes(big_h * big_w), np.uint8).reshape(big_h, big_w)
    h_c = double(h_half)
    h_c += nuclei
    h_c += (bits >> 2) * np.float32(1 / 64)
    np.minimum(h_c, np.float32(255), out=h_c)
    idx = h_c.astype(np.int32)
    idx <<= 10
    idx |= double(e_idx)
    idx |= bits & np.uint8(N_NOISE - 1)
    return np.asarray(np.take(lut, idx, axis=0), np.uint8)


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
        uint8 array of shape ``(256 * 256 * N_NOISE, 3)``; row
        ``(hi << 10) | (ei << 2) | n`` is the colour for haematoxylin
        ``hi / H_SCALE``, eosin ``ei / E_SCALE`` (optical density) and
        additive intensity noise level ``n``.
    """
    hh = np.arange(256, dtype=np.float64) / H_SCALE
    e = np.arange(256, dtype=np.float64) / E_SCALE
    od = hh[:, None, None] * h_vec + e[None, :, None] * e_vec  # (256, 256, 3)
    rgb = np.exp(-od) * i0
    noise = (np.arange(N_NOISE, dtype=np.float64) - (N_NOISE - 1) / 2) * 1.6
    lut = rgb[:, :, None, :] + noise[None, None, :, None]
    return np.clip(np.rint(lut), 0, 255).astype(np.uint8).reshape(-1, 3)


def _fibres(rng: np.random.Generator, h: int, w: int) -> F32:
    """Multiplicative stroma texture at half resolution: wavy fibres.

    Noise is smoothed strongly along one axis and little across it, then every
    column is shifted by a smooth random displacement, which bends the fibres.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    h, w : int
        Low-resolution size; the output is ``(h * LOW // 2, w * LOW // 2)``.

    Returns
    -------
    numpy.ndarray
        float32 texture with mean ~1 and values >= 0.2.
    """
    f = LOW // 2
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
    disp_low = smooth_noise(rng, (lh, lw), 6.0) * np.float32(10.0)
    np.clip(disp_low, 1 - margin, margin - 1, out=disp_low)
    disp_low += np.float32(margin)
    idx = upsample(disp_low, rows, cols, factor=f).astype(np.intp)
    idx *= cols
    idx += np.arange(rows * cols, dtype=np.intp).reshape(rows, cols)
    fib = np.take(base.reshape(-1), idx)
    if vertical:
        fib = np.ascontiguousarray(fib.T)
    return np.asarray(fib, np.float32)
