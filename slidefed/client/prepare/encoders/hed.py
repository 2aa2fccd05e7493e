"""The ``hed`` encoder: stain-colour and texture statistics, no weights.

Colour deconvolution into haematoxylin, eosin and DAB optical densities
(Ruifrok and Johnston), then intensity, nuclear-density and texture statistics
per tile. It is fast on a CPU and is the default for demos and CPU-only sites.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

# Ruifrok & Johnston stain vectors (rows: H, E, DAB) in optical-density space.
_STAINS = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
_STAINS = _STAINS / np.linalg.norm(_STAINS, axis=1, keepdims=True)
_UNMIX = np.linalg.inv(_STAINS).astype(np.float32)


def rgb_to_hed(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    """Optical densities of the H, E and DAB stains, shape (..., 3)."""
    od = -np.log((rgb.astype(np.float32) + 1.0) / 256.0)
    return np.asarray(np.maximum(od @ _UNMIX, 0.0), dtype=np.float32)


class HedEncoder:
    """Stain and texture statistics per tile; no weights."""

    encoder_id = "hed-v1"
    dim = 24
    #: Tiles of any size at the site's tiling; no resolution of its own.
    mpp: float | None = None
    input_size: int | None = None
    #: Cheap on a CPU: each worker process encodes the tiles it reads.
    in_workers = True

    def encode(self, tiles: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Encode (n, h, w, 3) uint8 tiles into (n, 24) float32 features."""
        return np.stack([self._one(t) for t in tiles]).astype(np.float32)

    def _one(self, tile: NDArray[np.uint8]) -> NDArray[np.float64]:
        hed = rgb_to_hed(tile)
        h, e = hed[..., 0], hed[..., 1]
        grey = tile.astype(np.float32).mean(axis=2) / 255.0
        tissue = (255.0 - tile.astype(np.float32).min(axis=2)) > 40.0
        nuclei = h > 0.5
        labels, count = ndimage.label(nuclei)
        sizes = np.bincount(labels.ravel())[1:] if count else np.zeros(1)
        gy, gx = np.gradient(grey)
        feats = [
            *np.percentile(h, [10, 50, 90]),
            float(h.mean()),
            float(h.std()),
            *np.percentile(e, [10, 50, 90]),
            float(e.mean()),
            float(e.std()),
            float((h > 0.3).mean()),
            float((e > 0.3).mean()),
            float(nuclei.mean()),
            float((h > 0.8).mean()),
            float(h[nuclei].mean()) if nuclei.any() else 0.0,
            float(count) / 100.0,
            float(sizes.mean()) / 100.0,
            float(tissue.mean()),
            float(np.hypot(gx, gy).mean()) * 10.0,
            float(ndimage.laplace(grey).var()) * 100.0,
            *(tile.reshape(-1, 3).mean(axis=0) / 255.0),
            float(grey.std()),
        ]
        return np.asarray(feats, dtype=np.float64)


__all__ = ["HedEncoder", "rgb_to_hed"]
