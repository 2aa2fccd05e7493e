"""Pixel array conversions shared by the readers, tiling and thumbnails.

:func:`box_reduce` is the one box downsampling of the package: tiles (rounded
block means, as Pillow's ``Image.reduce``), tissue thumbnails and the
benchmark's pyramids (truncated integer block means) all go through it.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray


def to_rgb(arr: NDArray[Any]) -> NDArray[np.uint8]:
    """(h, w), (h, w, 1), (h, w, 3) or (h, w, 4) uint8 pixels as (h, w, 3)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2), dtype=np.uint8)
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


def box_reduce(
    arr: NDArray[np.uint8],
    factor: int,
    *,
    rounding: Literal["nearest", "floor"] = "nearest",
) -> NDArray[np.uint8]:
    """Average (h, w, 3) pixels over ``factor`` x ``factor`` blocks.

    Parameters
    ----------
    arr : numpy.ndarray
        (h, w, 3) uint8 pixels.
    factor : int
        Side of a block; 1 returns ``arr`` itself.
    rounding : {"nearest", "floor"}
        ``nearest``: each block mean rounded, as Pillow's ``Image.reduce`` does
        (a partial block at the right or bottom edge is averaged over the
        pixels it has); what tiles are reduced with. ``floor``: the integer
        part of each block mean, over whole blocks only (rows and columns past
        the last whole block are dropped); what thumbnails and the benchmark's
        pyramid levels are made with.

    Returns
    -------
    numpy.ndarray
        The reduced (h', w', 3) uint8 pixels.
    """
    if factor == 1:
        return arr
    if rounding == "floor":
        h, w = arr.shape[0] // factor, arr.shape[1] // factor
        blocks = arr[: h * factor, : w * factor].reshape(
            h, factor, w, factor, *arr.shape[2:]
        )
        sums = blocks.sum(axis=(1, 3), dtype=np.uint32)
        return np.asarray(sums // (factor * factor), dtype=np.uint8)
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(arr))
    return np.asarray(img.reduce(factor), dtype=np.uint8)


def ycbcr_to_rgb(arr: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Full-range (JFIF) YCbCr to RGB, for JPEG 2000 tiles stored as YCbCr."""
    ycc = arr.astype(np.float32)
    y = ycc[..., 0]
    cb = ycc[..., 1] - 128.0
    cr = ycc[..., 2] - 128.0
    rgb = np.stack(
        [y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], axis=-1
    )
    return np.asarray(np.clip(np.rint(rgb), 0, 255), dtype=np.uint8)


__all__ = ["box_reduce", "to_rgb", "ycbcr_to_rgb"]
